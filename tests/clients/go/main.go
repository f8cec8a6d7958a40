// The Go client of the client matrix (tests/test_clients.py): net/http running every case as
// an app using it would, printing what it saw as JSON.
// Usage: goclient '{"base": ..., "prefix": ..., "proxy": ..., "ca": ...}'
package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/cookiejar"
	"net/textproto"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

type config struct {
	Base   string `json:"base"`
	Prefix string `json:"prefix"`
	Proxy  string `json:"proxy"`
	CA     string `json:"ca"`
}

type view struct {
	Status  int         `json:"status"`
	Reason  string      `json:"reason"`
	Headers [][2]string `json:"headers"`
	Len     int         `json:"body_len"`
	Sha256  string      `json:"body_sha256"`
	Text    *string     `json:"text,omitempty"`
	Path    string      `json:"path"`
	Jar     []string    `json:"jar,omitempty"`
}

const query = "?tag=a&tag=b&%C3%BCber=%E2%9C%93&%E9%8D%B5=2"

func must(err error) {
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}

func main() {
	var cfg config
	must(json.Unmarshal([]byte(os.Args[1]), &cfg))
	transport := &http.Transport{ExpectContinueTimeout: 5 * time.Second}
	if cfg.Proxy != "" {
		proxy, err := url.Parse(cfg.Proxy)
		must(err)
		transport.Proxy = http.ProxyURL(proxy) // ProxyFromEnvironment skips loopback hosts
	}
	if cfg.CA != "" {
		pem, err := os.ReadFile(cfg.CA)
		must(err)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		transport.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Transport: transport, Jar: jar, Timeout: 30 * time.Second}
	noFollow := &http.Client{Transport: transport, Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	base := cfg.Base + cfg.Prefix
	out := map[string]view{}

	see := func(name string, c *http.Client, method, target string, body io.Reader,
		headers map[string]string, cookies bool) {
		req, err := http.NewRequest(method, target, body)
		must(err)
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		must(err)
		data, err := io.ReadAll(resp.Body)
		must(err)
		resp.Body.Close()
		v := view{Status: resp.StatusCode, Len: len(data)}
		v.Reason = strings.TrimPrefix(resp.Status, strconv.Itoa(resp.StatusCode)+" ")
		if v.Reason == strconv.Itoa(resp.StatusCode) {
			v.Reason = ""
		}
		for k, values := range resp.Header {
			for _, one := range values {
				v.Headers = append(v.Headers, [2]string{strings.ToLower(k), one})
			}
		}
		sort.Slice(v.Headers, func(i, j int) bool {
			a, b := v.Headers[i], v.Headers[j]
			return a[0] < b[0] || (a[0] == b[0] && a[1] < b[1])
		})
		if v.Headers == nil {
			v.Headers = [][2]string{}
		}
		sum := sha256.Sum256(data)
		v.Sha256 = hex.EncodeToString(sum[:])
		if len(data) <= 4096 && utf8.Valid(data) {
			text := string(data)
			v.Text = &text
		}
		v.Path = resp.Request.URL.RequestURI()
		if cookies {
			for _, c := range jar.Cookies(resp.Request.URL) {
				v.Jar = append(v.Jar, c.Name)
			}
			sort.Strings(v.Jar)
		}
		out[name] = v
	}

	var lines bytes.Buffer // 5 MiB of CSV lines, as every client builds it
	for i := 0; i*21 < 5*1024*1024; i++ {
		fmt.Fprintf(&lines, "%08d,widget,3,ok\n", i)
	}
	upload := lines.Bytes()[:5*1024*1024]
	var form bytes.Buffer
	parts := multipart.NewWriter(&form)
	must(parts.WriteField("title", "Résumé"))
	head := textproto.MIMEHeader{}
	head.Set("Content-Disposition", `form-data; name="doc"; filename="notes.txt"`)
	head.Set("Content-Type", "text/plain")
	part, err := parts.CreatePart(head)
	must(err)
	_, err = part.Write(bytes.Repeat([]byte("hello\n"), 100))
	must(err)
	must(parts.Close())

	see("json", client, "GET", base+"/json", nil, map[string]string{"Accept": "application/json"}, false)
	see("post_201", client, "POST", base+"/items", strings.NewReader(`{"name": "widget", "qty": 3}`),
		map[string]string{"Content-Type": "application/json"}, false)
	see("gzip", client, "GET", base+"/gzip", nil, nil, false) // the transport asks for gzip
	see("stream", client, "GET", base+"/stream", nil, nil, false)
	see("binary", client, "GET", base+"/binary", nil, nil, false)
	see("no_content", client, "DELETE", base+"/items/7", nil, nil, false)
	see("etag", client, "GET", base+"/etag", nil, nil, false)
	see("not_modified", client, "GET", base+"/etag", nil, map[string]string{"If-None-Match": `"v1"`}, false)
	see("redirect_followed", client, "GET", base+"/redirect", nil, nil, false)
	see("redirect_not_followed", noFollow, "GET", base+"/redirect?n=2", nil, nil, false)
	see("head", client, "HEAD", base+"/json", nil, nil, false)
	see("upload", client, "POST", base+"/upload", bytes.NewReader(upload),
		map[string]string{"Expect": "100-continue", "Content-Type": "text/csv"}, false)
	see("multipart", client, "POST", base+"/multipart", &form,
		map[string]string{"Content-Type": parts.FormDataContentType()}, false)
	see("query", client, "GET", base+"/query"+query, nil, nil, false)
	see("bare", client, "GET", base+"/bare", nil, nil, false)
	see("set_cookie", client, "GET", base+"/cookie", nil, nil, true)
	must(json.NewEncoder(os.Stdout).Encode(out))
}
