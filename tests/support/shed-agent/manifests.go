// What shed-agent does with the extension manifests in /etc/shed-extensions.d,
// restated from its behaviour (charliek/shed, cmd/shed-agent/extensions.go) so
// the tests can hold the manifests `shed-ext install-guest` writes to it. It is
// Go and decodes with the very YAML library shed-agent uses, gopkg.in/yaml.v3
// (Debian's golang-gopkg-yaml.v3-dev), into a struct of the same fields and
// tags, so a manifest reads here exactly as it reads in the VM:
//
//   - every entry of the directory, in name order, that is not a directory and
//     whose name ends in ".yaml" (".yml" and other names are ignored);
//   - read following symlinks; unreadable or undecodable: skipped, with a warning
//     (yaml.v3 refuses a duplicate key, a list or a map where a string goes, and
//     a document that is not a mapping; unknown keys are ignored; any scalar is
//     taken as its text; only the first document counts);
//   - `namespace` and `systemd_unit` must be non-empty, or it is skipped;
//   - keyed by `namespace` (not by file name); a second file with the same
//     namespace is skipped;
//   - for each namespace the server enables: with a manifest, `systemctl enable
//     --now <systemd_unit>`; without, a warning and nothing.
//
// Usage: manifests DIR [ENABLED_NAMESPACE...]; prints one JSON object.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

type manifest struct {
	Namespace   string `yaml:"namespace"`
	SystemdUnit string `yaml:"systemd_unit"`
	Description string `yaml:"description,omitempty"`
}

type found struct {
	File        string `json:"file"`
	Namespace   string `json:"namespace"`
	SystemdUnit string `json:"systemd_unit"`
	Description string `json:"description"`
}

type enable struct {
	Namespace string   `json:"namespace"`
	Command   []string `json:"command"`
}

type report struct {
	Manifests map[string]found `json:"manifests"`
	Warnings  []string         `json:"warnings"`
	Enable    []enable         `json:"enable"`
	Missing   []string         `json:"missing"`
}

func load(dir string, r *report) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !os.IsNotExist(err) {
			r.Warnings = append(r.Warnings, fmt.Sprintf("cannot read %s: %v", dir, err))
		}
		return
	}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		file := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(file)
		if err != nil {
			r.Warnings = append(r.Warnings, fmt.Sprintf("%s: unreadable: %v", e.Name(), err))
			continue
		}
		var m manifest
		if err := yaml.Unmarshal(data, &m); err != nil {
			r.Warnings = append(r.Warnings, fmt.Sprintf("%s: not a manifest: %v", e.Name(), err))
			continue
		}
		switch {
		case m.Namespace == "":
			r.Warnings = append(r.Warnings, fmt.Sprintf("%s: empty namespace, skipped", e.Name()))
		case m.SystemdUnit == "":
			r.Warnings = append(r.Warnings, fmt.Sprintf("%s: empty systemd_unit, skipped", e.Name()))
		default:
			if _, dup := r.Manifests[m.Namespace]; dup {
				r.Warnings = append(r.Warnings, fmt.Sprintf("%s: namespace %q already has a manifest, skipped", e.Name(), m.Namespace))
				continue
			}
			r.Manifests[m.Namespace] = found{File: e.Name(), Namespace: m.Namespace, SystemdUnit: m.SystemdUnit, Description: m.Description}
		}
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: manifests DIR [ENABLED_NAMESPACE...]")
		os.Exit(2)
	}
	r := report{Manifests: map[string]found{}, Warnings: []string{}, Enable: []enable{}, Missing: []string{}}
	load(os.Args[1], &r)
	enabled := os.Args[2:]
	if len(r.Manifests) == 0 && len(enabled) > 0 {
		r.Warnings = append(r.Warnings, "no extension manifests found")
		r.Missing = append(r.Missing, enabled...)
	} else {
		for _, ns := range enabled {
			m, ok := r.Manifests[ns]
			if !ok {
				r.Missing = append(r.Missing, ns)
				continue
			}
			r.Enable = append(r.Enable, enable{Namespace: ns, Command: []string{"systemctl", "enable", "--now", m.SystemdUnit}})
		}
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
