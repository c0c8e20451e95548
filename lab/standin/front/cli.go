package main

// The client commands a compose healthcheck and an operator use: they ask the
// server at OLLAMA_HOST, so `ollama list` fails while nothing answers.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

var errNotRunning = errors.New("could not connect to ollama server, run 'ollama serve' to start it")

func clientBase() string {
	host, port, _ := net.SplitHostPort(hostPort(os.Getenv("OLLAMA_HOST")))
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip.To4() == nil {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

func ask(method, path string, in, out any) error {
	var body bytes.Buffer
	if in != nil {
		if err := json.NewEncoder(&body).Encode(in); err != nil {
			return err
		}
	}
	req, err := http.NewRequest(method, clientBase()+path, &body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return errNotRunning
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var refusal struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&refusal)
		if refusal.Error == "" {
			refusal.Error = resp.Status
		}
		return errors.New(refusal.Error)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.0f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.0f KB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Second:
		return "Less than a second ago"
	case d < time.Minute:
		return fmt.Sprintf("%d seconds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d minutes ago", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%d hours ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

func short(digest string) string {
	if len(digest) > 12 {
		return digest[:12]
	}
	return digest
}

func listModels() error {
	var listing ListResponse
	if err := ask(http.MethodGet, "/api/tags", nil, &listing); err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 4, ' ', 0)
	fmt.Fprintln(w, "NAME\tID\tSIZE\tMODIFIED")
	for _, m := range listing.Models {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", m.Name, short(m.Digest), humanBytes(m.Size), ago(m.ModifiedAt))
	}
	return w.Flush()
}

func listRunning() error {
	var running ProcessResponse
	if err := ask(http.MethodGet, "/api/ps", nil, &running); err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 4, ' ', 0)
	fmt.Fprintln(w, "NAME\tID\tSIZE\tPROCESSOR\tCONTEXT\tUNTIL")
	for _, m := range running.Models {
		until := "Forever"
		if time.Until(m.ExpiresAt) < 100*365*24*time.Hour {
			until = m.ExpiresAt.Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t100%% CPU\t%d\t%s\n", m.Name, short(m.Digest),
			humanBytes(m.Size), m.ContextLength, until)
	}
	return w.Flush()
}

func showModel(name string) error {
	var info ShowResponse
	if err := ask(http.MethodPost, "/api/show", ShowRequest{Model: name}, &info); err != nil {
		return err
	}
	arch := info.Details.Family
	fmt.Println("  Model")
	for _, row := range [][2]any{
		{"architecture", arch},
		{"parameters", info.Details.ParameterSize},
		{"context length", info.ModelInfo[arch+".context_length"]},
		{"embedding length", info.ModelInfo[arch+".embedding_length"]},
		{"quantization", info.Details.QuantizationLevel},
	} {
		fmt.Printf("    %-20s%v\n", row[0], row[1])
	}
	fmt.Println("\n  Capabilities")
	for _, capability := range info.Capabilities {
		fmt.Printf("    %s\n", capability)
	}
	if info.Parameters != "" {
		fmt.Println("\n  Parameters")
		for _, line := range strings.Split(info.Parameters, "\n") {
			fmt.Printf("    %s\n", line)
		}
	}
	return nil
}
