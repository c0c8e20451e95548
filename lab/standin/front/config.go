package main

// The OLLAMA_* environment, read as Ollama's envconfig package reads it (v0.32.15).
// The front owns the settings that shape HTTP answers (address, origins,
// default keep-alive and context length); the engine process inherits the
// environment for the rest (models directory, parallelism, queue, prune).

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// version is the Ollama release whose behaviour the stand-in copies; the
// suffix says what it really is.
const version = "0.32.15-standin"

type settings struct {
	listen        string        // host:port to listen on
	origins       []string      // CORS allow-list (OLLAMA_ORIGINS + Ollama's defaults)
	keepAlive     time.Duration // OLLAMA_KEEP_ALIVE (Forever when negative)
	contextLength int           // OLLAMA_CONTEXT_LENGTH; 0 = automatic
	noCloud       bool          // OLLAMA_NO_CLOUD
}

func readSettings() settings {
	return settings{
		listen:        hostPort(os.Getenv("OLLAMA_HOST")),
		origins:       allowedOrigins(os.Getenv("OLLAMA_ORIGINS")),
		keepAlive:     keepAlive(os.Getenv("OLLAMA_KEEP_ALIVE")),
		contextLength: int(envUint("OLLAMA_CONTEXT_LENGTH", 0)),
		noCloud:       envBool("OLLAMA_NO_CLOUD"),
	}
}

// hostPort reads OLLAMA_HOST: [scheme://]host[:port][/path]; default 127.0.0.1:11434.
func hostPort(raw string) string {
	raw = strings.TrimSpace(raw)
	defaultPort := "11434"
	scheme, rest, hasScheme := strings.Cut(raw, "://")
	if !hasScheme {
		rest = raw
	} else if scheme == "http" {
		defaultPort = "80"
	} else if scheme == "https" {
		defaultPort = "443"
	}
	rest, _, _ = strings.Cut(rest, "/")
	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		host, port = "127.0.0.1", defaultPort
		if ip := net.ParseIP(strings.Trim(rest, "[]")); ip != nil {
			host = ip.String()
		} else if rest != "" {
			host = rest
		}
	}
	if n, err := strconv.ParseInt(port, 10, 32); err != nil || n < 0 || n > 65535 {
		port = defaultPort
	}
	return net.JoinHostPort(host, port)
}

// allowedOrigins is OLLAMA_ORIGINS plus the local and app origins Ollama always allows.
func allowedOrigins(raw string) []string {
	var origins []string
	if raw != "" {
		origins = strings.Split(raw, ",")
	}
	for _, host := range []string{"localhost", "127.0.0.1", "0.0.0.0"} {
		origins = append(origins,
			"http://"+host, "https://"+host,
			"http://"+net.JoinHostPort(host, "*"), "https://"+net.JoinHostPort(host, "*"))
	}
	return append(origins, "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
}

// keepAlive reads OLLAMA_KEEP_ALIVE: a Go duration or a bare number of seconds
// (the environment accepts "-1"; a request's keep_alive does not).
func keepAlive(raw string) time.Duration {
	d := 5 * time.Minute
	if raw != "" {
		if parsed, err := time.ParseDuration(raw); err == nil {
			d = parsed
		} else if n, err := strconv.ParseInt(raw, 10, 64); err == nil {
			d = time.Duration(n) * time.Second
		}
	}
	if d < 0 {
		return Forever
	}
	return d
}

func envUint(key string, fallback uint64) uint64 {
	if raw := os.Getenv(key); raw != "" {
		if n, err := strconv.ParseUint(raw, 10, 64); err == nil {
			return n
		}
		fmt.Fprintf(os.Stderr, "invalid environment variable %s=%q, using default %d\n", key, raw, fallback)
	}
	return fallback
}

// envBool: unset is false; a value strconv.ParseBool cannot read counts as true, as in Ollama.
func envBool(key string) bool {
	raw := os.Getenv(key)
	if raw == "" {
		return false
	}
	b, err := strconv.ParseBool(raw)
	return err != nil || b
}

func lower(s string) string { return strings.ToLower(s) }
