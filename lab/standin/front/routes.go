package main

// Ollama's HTTP layer (server/routes.go, v0.32.15), built the way Ollama builds
// it: net/http + Gin with HandleMethodNotAllowed, gin-contrib/cors with
// Ollama's configuration, the allowed-hosts check, and handlers that bind the
// body into typed requests and answer with Ollama's status codes and messages.
// What is behind Ollama's scheduler — the store, loading, generation — is the
// engine's.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/gin-contrib/cors"
	"github.com/gin-gonic/gin"
)

type server struct {
	settings settings
	engine   *engine
	addr     net.Addr
}

// modelInfo is what the engine knows about one stored model.
type modelInfo struct {
	Name         string         `json:"name"`      // display name, gemma3:270m
	FullName     string         `json:"full_name"` // registry.ollama.ai/library/gemma3:270m
	Digest       string         `json:"digest"`
	Size         int64          `json:"size"`
	ModifiedAt   float64        `json:"modified_at"` // seconds since the epoch
	Details      ModelDetails   `json:"details"`
	Template     string         `json:"template"`
	System       string         `json:"system"`
	License      string         `json:"license"`
	Params       map[string]any `json:"params"`
	Capabilities []string       `json:"capabilities"`
}

func (m *modelInfo) has(capability string) bool {
	for _, c := range m.Capabilities {
		if c == capability {
			return true
		}
	}
	return false
}

func unixTime(seconds float64) time.Time {
	return time.Unix(0, int64(seconds*1e9))
}

var corsHeaders = []string{
	"Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
	"OpenAI-Beta", "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
	"x-stainless-helper-method", "x-stainless-lang", "x-stainless-os",
	"x-stainless-package-version", "x-stainless-poll-helper", "x-stainless-retry-count",
	"x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-timeout",
}

func (s *server) routes() http.Handler {
	corsConfig := cors.DefaultConfig()
	corsConfig.AllowWildcard = true
	corsConfig.AllowBrowserExtensions = true
	corsConfig.AllowHeaders = corsHeaders
	corsConfig.AllowOrigins = s.settings.origins

	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.Use(gin.Logger(), gin.Recovery())
	r.HandleMethodNotAllowed = true
	r.Use(cors.New(corsConfig), s.allowedHosts)

	running := func(c *gin.Context) { c.String(http.StatusOK, "Ollama is running") }
	r.HEAD("/", running)
	r.GET("/", running)
	versionHandler := func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"version": version}) }
	r.HEAD("/api/version", versionHandler)
	r.GET("/api/version", versionHandler)
	r.GET("/api/status", s.status)

	r.POST("/api/pull", s.pull)
	r.POST("/api/push", s.push)
	r.HEAD("/api/tags", s.list)
	r.GET("/api/tags", s.list)
	r.POST("/api/show", s.show)
	r.DELETE("/api/delete", s.delete)
	r.POST("/api/create", s.create)
	r.POST("/api/blobs/:digest", s.createBlob)
	r.HEAD("/api/blobs/:digest", s.headBlob)
	r.POST("/api/copy", s.copy)
	r.GET("/api/ps", s.ps)
	r.POST("/api/generate", s.generate)
	r.POST("/api/chat", s.chat)
	r.POST("/api/embed", s.embed)
	r.POST("/api/embeddings", s.embed)
	return r
}

// allowedHosts refuses requests whose Host is not local while the server
// listens on loopback (DNS rebinding), as Ollama's allowedHostsMiddleware does.
func (s *server) allowedHosts(c *gin.Context) {
	if s.addr == nil {
		c.Next()
		return
	}
	if addr, err := netip.ParseAddrPort(s.addr.String()); err == nil && !addr.Addr().IsLoopback() {
		c.Next()
		return
	}
	host, _, err := net.SplitHostPort(c.Request.Host)
	if err != nil {
		host = c.Request.Host
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		if addr.IsLoopback() || addr.IsPrivate() || addr.IsUnspecified() {
			c.Next()
			return
		}
	}
	if localHostName(host) {
		if c.Request.Method == http.MethodOptions {
			c.AbortWithStatus(http.StatusNoContent)
			return
		}
		c.Next()
		return
	}
	c.AbortWithStatus(http.StatusForbidden)
}

func localHostName(host string) bool {
	host = strings.ToLower(host)
	if host == "" || host == "localhost" {
		return true
	}
	if name, err := os.Hostname(); err == nil && host == strings.ToLower(name) {
		return true
	}
	for _, tld := range []string{"localhost", "local", "internal"} {
		if strings.HasSuffix(host, "."+tld) {
			return true
		}
	}
	return false
}

// bind decodes the body into a typed request as Ollama does: no body is
// "missing request body", anything Go's decoder refuses is a 400 with its message.
func bind(c *gin.Context, req any) bool {
	err := c.ShouldBindJSON(req)
	if errors.Is(err, io.EOF) {
		c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"error": "missing request body"})
		return false
	}
	if err != nil {
		c.AbortWithStatusJSON(http.StatusBadRequest, gin.H{"error": err.Error()})
		return false
	}
	return true
}

func fail(c *gin.Context, status int, message string) {
	c.AbortWithStatusJSON(status, gin.H{"error": message})
}

// engineFailure answers a refusal from the engine with its status, or 500.
func engineFailure(c *gin.Context, err error) {
	var refusal *engineError
	if errors.As(err, &refusal) {
		fail(c, refusal.Status, refusal.Message)
		return
	}
	if c.Request.Context().Err() != nil {
		fail(c, 499, "request canceled")
		return
	}
	fail(c, http.StatusInternalServerError, err.Error())
}

// lookup asks the engine for a model; the caller words the refusals as its Ollama handler does.
func (s *server) lookup(c *gin.Context, name string) (*modelInfo, error) {
	var m modelInfo
	if err := s.engine.call(c.Request.Context(), http.MethodPost, "/model", gin.H{"model": name}, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

func (s *server) status(c *gin.Context) {
	source := "none"
	if s.settings.noCloud {
		source = "env"
	}
	c.JSON(http.StatusOK, gin.H{"cloud": gin.H{"disabled": s.settings.noCloud, "source": source}})
}

// --- the model store ---------------------------------------------------------------

func (s *server) list(c *gin.Context) {
	var listing struct {
		Models []modelInfo `json:"models"`
	}
	if err := s.engine.call(c.Request.Context(), http.MethodGet, "/models", nil, &listing); err != nil {
		engineFailure(c, err)
		return
	}
	models := []ListModelResponse{}
	for _, m := range listing.Models {
		models = append(models, ListModelResponse{
			Name: m.Name, Model: m.Name, ModifiedAt: unixTime(m.ModifiedAt), Size: m.Size,
			Digest: m.Digest, Details: m.Details, Capabilities: m.Capabilities,
		})
	}
	c.JSON(http.StatusOK, ListResponse{Models: models})
}

func (s *server) ps(c *gin.Context) {
	var running struct {
		Models []struct {
			modelInfo
			Memory        int64    `json:"memory"`
			ExpiresAt     *float64 `json:"expires_at"` // nil: kept loaded forever
			ContextLength int      `json:"context_length"`
		} `json:"models"`
	}
	if err := s.engine.call(c.Request.Context(), http.MethodGet, "/ps", nil, &running); err != nil {
		engineFailure(c, err)
		return
	}
	models := []ProcessModelResponse{}
	for _, m := range running.Models {
		expires := time.Now().Add(Forever)
		if m.ExpiresAt != nil {
			expires = unixTime(*m.ExpiresAt)
		}
		models = append(models, ProcessModelResponse{
			Name: m.Name, Model: m.Name, Size: m.Memory, Digest: m.Digest, Details: m.Details,
			ExpiresAt: expires, SizeVRAM: 0, ContextLength: m.ContextLength,
		})
	}
	// The longest time left first, as Ollama sorts them.
	sort.SliceStable(models, func(i, j int) bool {
		return models[i].ExpiresAt.Unix() > models[j].ExpiresAt.Unix()
	})
	c.JSON(http.StatusOK, ProcessResponse{Models: models})
}

func (s *server) show(c *gin.Context) {
	var req ShowRequest
	if !bind(c, &req) {
		return
	}
	if req.Model == "" {
		req.Model = req.Name
	}
	if req.Model == "" {
		fail(c, http.StatusBadRequest, "model is required")
		return
	}
	var shown struct {
		modelInfo
		Modelfile     string         `json:"modelfile"`
		Parameters    string         `json:"parameters"`
		ModelInfo     map[string]any `json:"model_info"`
		ProjectorInfo map[string]any `json:"projector_info"`
		Tensors       []Tensor       `json:"tensors"`
	}
	err := s.engine.call(c.Request.Context(), http.MethodPost, "/show",
		gin.H{"model": req.Model, "verbose": req.Verbose}, &shown)
	switch {
	case isEngineError(err, "not_found"):
		fail(c, http.StatusNotFound, fmt.Sprintf("model '%s' not found", req.Model))
		return
	case isEngineError(err, "invalid_name"):
		fail(c, http.StatusBadRequest, "invalid model name")
		return
	case err != nil:
		engineFailure(c, err)
		return
	}
	system := shown.System
	if req.System != "" {
		system = req.System
	}
	if shown.ModelInfo == nil {
		shown.ModelInfo = map[string]any{}
	}
	c.JSON(http.StatusOK, ShowResponse{
		License: shown.License, Modelfile: shown.Modelfile, Parameters: shown.Parameters,
		Template: shown.Template, System: system, Details: shown.Details,
		ModelInfo: shown.ModelInfo, ProjectorInfo: shown.ProjectorInfo, Tensors: shown.Tensors,
		Capabilities: shown.Capabilities, ModifiedAt: unixTime(shown.ModifiedAt),
	})
}

var blobDigest = regexp.MustCompile(`^sha256[:-][0-9a-fA-F]{64}$`)

func (s *server) headBlob(c *gin.Context) {
	digest := c.Param("digest")
	if !blobDigest.MatchString(digest) {
		fail(c, http.StatusBadRequest, "invalid digest format")
		return
	}
	if err := s.engine.call(c.Request.Context(), http.MethodHead, "/blobs/"+digest, nil, nil); err != nil {
		fail(c, http.StatusNotFound, fmt.Sprintf("blob %q not found", digest))
		return
	}
	c.Status(http.StatusOK)
}

func (s *server) createBlob(c *gin.Context) {
	digest := c.Param("digest")
	if !blobDigest.MatchString(digest) {
		fail(c, http.StatusBadRequest, "invalid digest format")
		return
	}
	if s.engine.call(c.Request.Context(), http.MethodHead, "/blobs/"+digest, nil, nil) == nil {
		c.Status(http.StatusOK)
		return
	}
	resp, err := s.engine.open(c.Request.Context(), http.MethodPost, "/blobs/"+digest, c.Request.Body)
	if err != nil {
		engineFailure(c, err)
		return
	}
	resp.Body.Close()
	c.Status(http.StatusCreated)
}

func (s *server) create(c *gin.Context) {
	var req CreateRequest
	if !bind(c, &req) {
		return
	}
	for file, digest := range req.Files {
		if !fs.ValidPath(file) {
			fail(c, http.StatusBadRequest, "file path must be relative")
			return
		}
		if digest == "" {
			fail(c, http.StatusBadRequest, "invalid digest format")
			return
		}
	}
	if req.Model == "" {
		req.Model = req.Name
	}
	if req.Quantize != "" {
		fail(c, http.StatusBadRequest, "quantization is not supported by the Ollama stand-in")
		return
	}
	// The parameters are stored as they came: Ollama checks their types only
	// when a request uses the model.
	relayProgress(c, req.Stream, func(each func([]byte) error) error {
		return s.engine.stream(c.Request.Context(), "/create", req, each)
	})
}

func (s *server) copy(c *gin.Context) {
	var req CopyRequest
	if !bind(c, &req) {
		return
	}
	err := s.engine.call(c.Request.Context(), http.MethodPost, "/copy", req, nil)
	switch {
	case isEngineError(err, "invalid_source"):
		fail(c, http.StatusBadRequest, fmt.Sprintf("source %q is invalid", req.Source))
	case isEngineError(err, "invalid_destination"):
		fail(c, http.StatusBadRequest, fmt.Sprintf("destination %q is invalid", req.Destination))
	case isEngineError(err, "not_found"):
		fail(c, http.StatusNotFound, fmt.Sprintf("model %q not found", req.Source))
	case err != nil:
		engineFailure(c, err)
	default:
		c.Status(http.StatusOK)
	}
}

func (s *server) delete(c *gin.Context) {
	var req DeleteRequest
	if !bind(c, &req) {
		return
	}
	name := req.Model
	if name == "" {
		name = req.Name
	}
	err := s.engine.call(c.Request.Context(), http.MethodPost, "/delete", gin.H{"model": name}, nil)
	switch {
	case isEngineError(err, "invalid_name"):
		fail(c, http.StatusBadRequest, fmt.Sprintf("name %q is invalid", name))
	case isEngineError(err, "not_found"):
		fail(c, http.StatusNotFound, fmt.Sprintf("model '%s' not found", name))
	case err != nil:
		engineFailure(c, err)
	default:
		c.Status(http.StatusOK)
	}
}

// --- registries: there are none in a closed network -------------------------------------

type nameParts struct {
	Host      string `json:"host"`
	Namespace string `json:"namespace"`
	Model     string `json:"model"`
	Tag       string `json:"tag"`
}

// registryFailure really asks the registry for the manifest, so the error is
// the one Go's HTTP client gives on this network (a failed lookup, a refused
// dial, a timeout), worded as Ollama words it.
func registryFailure(action string, name nameParts) string {
	url := fmt.Sprintf("https://%s/v2/%s/%s/manifests/%s", name.Host, name.Namespace, name.Model, name.Tag)
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return fmt.Sprintf("%s model manifest: %s", action, err)
	}
	resp.Body.Close()
	return fmt.Sprintf("%s model manifest: the Ollama stand-in cannot download from %s", action, name.Host)
}

func (s *server) registry(c *gin.Context, action, status string) {
	var req PullRequest
	if !bind(c, &req) {
		return
	}
	raw := req.Model
	if raw == "" {
		raw = req.Name
	}
	if action == "push" && raw == "" {
		fail(c, http.StatusBadRequest, "model is required")
		return
	}
	var name nameParts
	if err := s.engine.call(c.Request.Context(), http.MethodPost, "/name", gin.H{"model": raw}, &name); err != nil {
		fail(c, http.StatusBadRequest, "invalid model name")
		return
	}
	relayProgress(c, req.Stream, func(each func([]byte) error) error {
		first, _ := json.Marshal(ProgressResponse{Status: status})
		if err := each(first); err != nil {
			return err
		}
		last, _ := json.Marshal(gin.H{"error": registryFailure(action, name)})
		return each(last)
	})
}

func (s *server) pull(c *gin.Context) { s.registry(c, "pull", "pulling manifest") }
func (s *server) push(c *gin.Context) { s.registry(c, "push", "retrieving manifest") }

// relayProgress answers progress lines as Ollama's streamResponse does, or with
// the last status alone (waitForStream) when the client asked for stream: false.
// An {"error": ...} line ends it: as the HTTP status when nothing was written
// yet, as a last line otherwise.
func relayProgress(c *gin.Context, stream *bool, produce func(func([]byte) error) error) {
	whole := stream != nil && !*stream
	var latest ProgressResponse
	err := produce(func(line []byte) error {
		var event struct {
			ProgressResponse
			Error  string `json:"error"`
			Status int    `json:"http_status"`
		}
		if err := json.Unmarshal(line, &event); err != nil {
			return err
		}
		if event.Error != "" {
			return &engineError{Status: orDefault(event.Status, http.StatusInternalServerError), Message: event.Error}
		}
		latest = event.ProgressResponse
		if !whole {
			writeLine(c, latest)
		}
		return nil
	})
	if err != nil {
		endWithError(c, err)
		return
	}
	if whole {
		c.JSON(http.StatusOK, latest)
	}
}

func orDefault(value, fallback int) int {
	if value == 0 {
		return fallback
	}
	return value
}

// writeLine writes one NDJSON object and flushes it to the client.
func writeLine(c *gin.Context, value any) {
	if !c.Writer.Written() {
		c.Header("Content-Type", "application/x-ndjson")
		c.Status(http.StatusOK)
	}
	data, _ := json.Marshal(value)
	_, _ = c.Writer.Write(append(data, '\n'))
	c.Writer.Flush()
}

// endWithError reports a failure: the response's status while nothing was
// written, an {"error": ...} line after the stream began.
func endWithError(c *gin.Context, err error) {
	if !c.Writer.Written() {
		engineFailure(c, err)
		return
	}
	writeLine(c, gin.H{"error": err.Error()})
}
