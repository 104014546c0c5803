package config

import (
	"bytes"

	"github.com/BurntSushi/toml"
)

// Tree is c as a TOML tree, its resolved sites as [[site]] blocks. Each
// block holds every key of its site, so it loads back to the same site
// whatever [ingress] and the kind's presets say.
func (c Config) Tree() (map[string]any, error) {
	c.SiteBlocks = nil
	tree, err := ToTree(c)
	if err != nil {
		return nil, err
	}
	if len(c.Sites) > 0 {
		var blocks []map[string]any
		for _, s := range c.Sites {
			b, err := ToTree(s)
			if err != nil {
				return nil, err
			}
			blocks = append(blocks, b)
		}
		tree["site"] = blocks
	}
	return tree, nil
}

// Text is c as a configuration file that loads back to c (Tree).
func (c Config) Text() (string, error) {
	tree, err := c.Tree()
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(tree); err != nil {
		return "", err
	}
	return buf.String(), nil
}

// ToTree encodes v as TOML and decodes that into a map: the keys and
// values exactly as a file would hold them (durations as "15m0s", the
// reserve as "5%").
func ToTree(v any) (map[string]any, error) {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(v); err != nil {
		return nil, err
	}
	tree := map[string]any{}
	if _, err := toml.Decode(buf.String(), &tree); err != nil {
		return nil, err
	}
	return tree, nil
}
