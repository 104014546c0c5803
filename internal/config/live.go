package config

import "sync/atomic"

// Live is a configuration that changes while a process runs (the live
// configuration, internal/liveconfig): readers take the current one with
// Get and keep it for one unit of work (a message, an SMTP session), so
// that a change applies from the next one on, never half-way.
type Live struct{ p atomic.Pointer[Config] }

// NewLive starts a Live at c.
func NewLive(c Config) *Live {
	l := &Live{}
	l.Set(c)
	return l
}

// Get is the configuration in force. It is shared: never modify it.
func (l *Live) Get() *Config { return l.p.Load() }

// Set puts c in force.
func (l *Live) Set(c Config) { l.p.Store(&c) }
