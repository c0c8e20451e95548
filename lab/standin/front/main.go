// Command ollama is the Ollama stand-in of the air-gap lab (test equipment,
// never production): Ollama's HTTP layer written the way Ollama writes it —
// Go's net/http, Gin, encoding/json into typed requests — in front of the
// real llama.cpp engine (a Python process it starts, as Ollama starts its
// runners). `ollama serve`, `list`, `ps`, `show` and `--version` work as the
// real CLI's do for a compose healthcheck and an operator's eye.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		usage()
	}
	var err error
	switch args[0] {
	case "-v", "--version":
		fmt.Printf("ollama version is %s\n", version)
	case "serve":
		err = serve()
	case "list", "ls":
		err = listModels()
	case "ps":
		err = listRunning()
	case "show":
		if len(args) != 2 {
			usage()
		}
		err = showModel(args[1])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "Usage: ollama serve | list | ps | show MODEL | --version   (Ollama stand-in, lab only)")
	os.Exit(2)
}

// serve starts the engine, then Ollama's HTTP server; SIGTERM stops both at once.
func serve() error {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	cfg := readSettings()
	listener, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	eng, err := startEngine()
	if err != nil {
		return err
	}
	defer eng.stop()
	srv := &server{settings: cfg, engine: eng, addr: listener.Addr()}
	httpServer := &http.Server{Handler: srv.routes()}
	log.Printf("Listening on %s (version %s)", listener.Addr(), version)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	stopped := make(chan error, 1)
	go func() {
		select {
		case <-signals:
			stopped <- nil
			_ = httpServer.Close() // stop at once, as Ollama does on SIGTERM
		case err := <-eng.exited:
			eng.exited <- err
			stopped <- fmt.Errorf("the engine exited: %v", err)
			// Requests it was serving end with an error line first; then the process
			// exits non-zero and its supervisor (the container's restart policy) starts it again.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = httpServer.Shutdown(ctx)
		}
	}()
	if err := httpServer.Serve(listener); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return <-stopped
}
