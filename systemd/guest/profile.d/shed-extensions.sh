# shed-extensions: point ssh, git, docker and every AWS SDK and CLI at the
# credentials brokered by the host. Values already set are kept (an agent
# forwarded with `ssh -A`, your own AWS settings). Check with `shed-ext status`.
shed_ext_run=/run/shed-extensions

if [ -z "${SSH_AUTH_SOCK-}" ]; then
  SSH_AUTH_SOCK="$shed_ext_run/ssh-agent.sock"
  export SSH_AUTH_SOCK
fi

if [ -z "${AWS_CONTAINER_CREDENTIALS_FULL_URI-}" ]; then
  AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:499/credentials
  AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE="$shed_ext_run/aws-token"
  export AWS_CONTAINER_CREDENTIALS_FULL_URI AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
  # Older AWS clients (seen: AWS CLI v2.9, boto3 1.26) ignore the _FILE
  # variable and send no token (403): give them the token itself.
  if [ -z "${AWS_CONTAINER_AUTHORIZATION_TOKEN-}" ] && [ -r "$AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" ]; then
    AWS_CONTAINER_AUTHORIZATION_TOKEN=$(cat "$AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") && export AWS_CONTAINER_AUTHORIZATION_TOKEN
  fi
fi

unset shed_ext_run
