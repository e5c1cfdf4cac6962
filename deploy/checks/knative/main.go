// Command knative-check runs Knative's own admission code on generated manifests: for every
// object of the YAML files named on the command line it does what the webhooks of a fresh
// Knative install do on `kubectl apply` (create), in their order:
//
//   - decode the object strictly into the upstream Go type (the validating webhooks
//     disallow unknown fields),
//   - SetDefaults, with the context the defaulting webhook builds,
//   - Validate, with the context the validating webhook builds (apis.WithinCreate).
//
// A kind handled by two webhooks (a Kafka-class Broker: eventing's and eventing-kafka's)
// is checked by both. The configuration in the context is the upstream code's defaults,
// which is what a fresh install's ConfigMaps hold (serving ships only `_example` keys), plus
// eventing's authentication-oidc, which docs/deploy.md has turned on first.
//
// The API server fills metadata.namespace from the request (`kubectl -n NS apply`) before
// the webhooks see an object, so -namespace does the same (SinkBinding defaults its
// subject's namespace from it).
//
// Output: one JSON line per object; exit status 1 when any object is refused or unreadable.
// Objects of kinds no Knative webhook handles (ConfigMap, Secret, ...) are listed as
// "not-knative": the kube-apiserver dry run checks those.
//
// Only manifests are checked here; the project's code is Python.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	kafkabrokerv1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/eventing/v1"
	kafkasinkv1alpha1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/eventing/v1alpha1"
	kafkasourcev1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/sources/v1beta1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	eventingv1alpha1 "knative.dev/eventing/pkg/apis/eventing/v1alpha1"
	"knative.dev/eventing/pkg/apis/feature"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	"knative.dev/eventing/pkg/auth"
	"knative.dev/pkg/apis"
	servingconfig "knative.dev/serving/pkg/apis/config"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// admitted is what every webhook type implements (resourcesemantics.GenericCRD's methods we call).
type admitted interface {
	apis.Defaultable
	apis.Validatable
}

// webhook is one admission webhook's view of a kind: a fresh object and the context it builds.
type webhook struct {
	name    string
	newType func() admitted
	context func(context.Context) context.Context
}

func servingContext(ctx context.Context) context.Context {
	// serving cmd/webhook: store.ToContext (config-defaults, config-features, config-autoscaler).
	return servingconfig.ToContext(ctx, servingconfig.FromContextOrDefaults(ctx))
}

func eventingContext(ctx context.Context) context.Context {
	// eventing cmd/webhook: featureStore.ToContext(...); config/core/configmaps/features.yaml
	// ships the same values as the code's defaults (delivery-timeout: enabled), and docs/deploy.md
	// has sender identity turned on before the eventing files are applied (EventPolicy needs it).
	flags, err := feature.NewFlagsConfigFromMap(map[string]string{feature.OIDCAuthentication: "enabled"})
	if err != nil {
		panic(err)
	}
	return feature.ToContext(ctx, flags)
}

func kafkaContext(ctx context.Context) context.Context {
	// eventing-kafka-broker cmd/webhook-kafka: apis.AllowDifferentNamespace(featureStore.ToContext(ctx)).
	return apis.AllowDifferentNamespace(eventingContext(ctx))
}

// webhooks: apiVersion/kind → the webhooks that default and validate it, as registered in the
// `types` maps of serving, eventing and eventing-kafka-broker's cmd/webhook*/main.go.
var webhooks = map[string][]webhook{
	"serving.knative.dev/v1/Service": {
		{"serving", func() admitted { return &servingv1.Service{} }, servingContext}},
	"eventing.knative.dev/v1/Broker": {
		{"eventing", func() admitted { return &eventingv1.Broker{} }, eventingContext},
		{"eventing-kafka", func() admitted { return &kafkabrokerv1.BrokerStub{} }, kafkaContext}},
	"eventing.knative.dev/v1/Trigger": {
		{"eventing", func() admitted { return &eventingv1.Trigger{} }, eventingContext}},
	"eventing.knative.dev/v1alpha1/EventPolicy": {
		{"eventing", func() admitted { return &eventingv1alpha1.EventPolicy{} }, eventingContext}},
	"sources.knative.dev/v1/SinkBinding": {
		{"eventing", func() admitted { return &sourcesv1.SinkBinding{} }, eventingContext}},
	"eventing.knative.dev/v1alpha1/KafkaSink": {
		{"eventing-kafka", func() admitted { return &kafkasinkv1alpha1.KafkaSink{} }, kafkaContext}},
	"sources.knative.dev/v1beta1/KafkaSource": {
		{"eventing-kafka", func() admitted { return &kafkasourcev1beta1.KafkaSource{} }, kafkaContext}},
}

// senders: the kinds that post events with a token of their own service account.
var senders = map[string]bool{"Trigger": true, "SinkBinding": true, "KafkaSource": true}

type result struct {
	File     string   `json:"file"`
	Kind     string   `json:"kind"`
	Name     string   `json:"name"`
	Status   string   `json:"status"` // valid | invalid | not-knative
	Webhooks []string `json:"webhooks,omitempty"`
	Errors   []string `json:"errors,omitempty"`
	Warnings []string `json:"warnings,omitempty"` // what kubectl would print next to "created"
	// The service account a sender's tokens name under Eventing's sender identity
	// (authentication-oidc): what a receiver that checks senders must allow.
	OIDCIdentity string `json:"oidcIdentity,omitempty"`
}

type header struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
}

// admit runs one webhook's defaulting then validation on the object's JSON: its warnings, its refusal.
func admit(hook webhook, raw []byte) (string, error) {
	obj := hook.newType()
	decoder := json.NewDecoder(bytes.NewReader(raw))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(obj); err != nil {
		return "", fmt.Errorf("decode: %w", err)
	}
	ctx := hook.context(apis.WithinCreate(context.Background()))
	obj.SetDefaults(ctx)
	fieldErr := obj.Validate(ctx)
	if fieldErr == nil {
		return "", nil
	}
	warnings := ""
	if w := fieldErr.Filter(apis.WarningLevel); w != nil {
		warnings = w.Error()
	}
	if errs := fieldErr.Filter(apis.ErrorLevel); errs != nil {
		return warnings, errors.New(errs.Error())
	}
	return warnings, nil
}

// inNamespace sets metadata.namespace when the object has none, as the API server does.
func inNamespace(raw []byte, namespace string) ([]byte, error) {
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	meta, _ := obj["metadata"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
		obj["metadata"] = meta
	}
	if _, set := meta["namespace"]; !set {
		meta["namespace"] = namespace
	}
	return json.Marshal(obj)
}

func check(file string, raw []byte, namespace string) result {
	var h header
	raw, err := inNamespace(raw, namespace)
	if err == nil {
		err = json.Unmarshal(raw, &h)
	}
	if err != nil {
		return result{File: file, Status: "invalid", Errors: []string{err.Error()}}
	}
	r := result{File: file, Kind: h.Kind, Name: h.Metadata.Name, Status: "valid"}
	if senders[h.Kind] {
		r.OIDCIdentity = auth.GetOIDCServiceAccountNameForResource(schema.FromAPIVersionAndKind(h.APIVersion, h.Kind), h.Metadata)
	}
	hooks, known := webhooks[h.APIVersion+"/"+h.Kind]
	if !known {
		r.Status = "not-knative"
		return r
	}
	for _, hook := range hooks {
		r.Webhooks = append(r.Webhooks, hook.name)
		warnings, err := admit(hook, raw)
		if warnings != "" {
			r.Warnings = append(r.Warnings, hook.name+": "+warnings)
		}
		if err != nil {
			r.Status = "invalid"
			r.Errors = append(r.Errors, hook.name+": "+err.Error())
		}
	}
	return r
}

// documents: every non-empty YAML document of the file, as JSON.
func documents(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	reader := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		raw, err := sigsyaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(raw)) > 0 && string(bytes.TrimSpace(raw)) != "null" {
			docs = append(docs, raw)
		}
	}
}

func versions() map[string]string {
	out := map[string]string{}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			switch dep.Path {
			case "knative.dev/serving", "knative.dev/eventing", "knative.dev/eventing-kafka-broker", "knative.dev/pkg":
				out[dep.Path] = dep.Version
			}
		}
	}
	return out
}

func main() {
	namespace := flag.String("namespace", "default", "the namespace the objects are applied in (kubectl -n)")
	showVersions := flag.Bool("versions", false, "print the Knative module versions built in, and exit")
	flag.Parse()
	if *showVersions {
		_ = json.NewEncoder(os.Stdout).Encode(versions())
		return
	}
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: knative-check [-namespace NS] FILE.yaml... | -versions")
		os.Exit(2)
	}
	out, failed := json.NewEncoder(os.Stdout), false
	for _, path := range flag.Args() {
		docs, err := documents(path)
		if err != nil {
			_ = out.Encode(result{File: path, Status: "invalid", Errors: []string{err.Error()}})
			failed = true
			continue
		}
		for _, raw := range docs {
			r := check(path, raw, *namespace)
			failed = failed || r.Status == "invalid"
			_ = out.Encode(r)
		}
	}
	if failed {
		os.Exit(1)
	}
}
