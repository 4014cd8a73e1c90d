package controllers

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/runtime/serializer/streaming"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// serveWatch answers every request with a protobuf watch stream of events, as
// the apiserver frames it (length-delimited metav1.WatchEvents whose objects
// are protobuf-encoded), and records the requests' queries.
func serveWatch(t *testing.T, events []watch.Event, queries chan<- string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		queries <- r.URL.Path + "?" + r.URL.RawQuery
		w.Header().Set("Content-Type", runtime.ContentTypeProtobuf+";stream=watch")
		w.WriteHeader(http.StatusOK)
		pb := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)
		raw := protobuf.NewRawSerializer(scheme.Scheme, scheme.Scheme)
		enc := streaming.NewEncoder(protobuf.LengthDelimitedFramer.NewFrameWriter(w), raw)
		objEnc := scheme.Codecs.EncoderForVersion(pb, corev1.SchemeGroupVersion)
		for _, ev := range events {
			obj, err := runtime.Encode(objEnc, ev.Object)
			if err != nil {
				t.Error(err)
				return
			}
			if err := enc.Encode(&metav1.WatchEvent{Type: string(ev.Type), Object: runtime.RawExtension{Raw: obj}}); err != nil {
				t.Error(err)
				return
			}
		}
		w.(http.Flusher).Flush()
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestPodWatchDecodesPruned: the pod watch's events carry pods pruned to what
// the record reads and the resourceVersion the reflector resumes from, whose
// records are those of the whole pods; a bookmark keeps its resourceVersion and
// an ERROR event its Status. The request is the one client-go's pod watch
// makes.
func TestPodWatchDecodesPruned(t *testing.T) {
	pods := listPods(40).Items
	var events []watch.Event
	for i := range pods {
		pods[i].ResourceVersion = fmt.Sprint(1000 + i)
		events = append(events, watch.Event{Type: []watch.EventType{watch.Added, watch.Modified, watch.Deleted}[i%3], Object: &pods[i]})
	}
	events = append(events,
		watch.Event{Type: watch.Bookmark, Object: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "2000"}}},
		watch.Event{Type: watch.Error, Object: &metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired, Message: "too old resource version"}})
	queries := make(chan string, 1)
	srv := serveWatch(t, events, queries)

	rc, err := newPodClient(&rest.Config{Host: srv.URL, ContentConfig: rest.ContentConfig{AcceptContentTypes: runtime.ContentTypeProtobuf}})
	if err != nil {
		t.Fatal(err)
	}
	timeout := int64(300)
	w, err := (&podLister{rc: rc}).watch(t.Context(), metav1.ListOptions{ResourceVersion: "999", AllowWatchBookmarks: true, TimeoutSeconds: &timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if q, want := <-queries, "/api/v1/pods?allowWatchBookmarks=true&resourceVersion=999&timeout=5m0s&timeoutSeconds=300&watch=true"; q != want {
		t.Errorf("request %s, want %s", q, want)
	}
	for i, want := range events {
		var got watch.Event
		select {
		case got = <-w.ResultChan():
		case <-time.After(10 * time.Second):
			t.Fatalf("event %d never came", i)
		}
		if got.Type != want.Type {
			t.Fatalf("event %d: %s, want %s", i, got.Type, want.Type)
		}
		switch wo := want.Object.(type) {
		case *corev1.Pod:
			p, ok := got.Object.(*corev1.Pod)
			if !ok {
				t.Fatalf("event %d: a %T", i, got.Object)
			}
			if p.ResourceVersion != wo.ResourceVersion {
				t.Errorf("event %d: resourceVersion %q, want %q", i, p.ResourceVersion, wo.ResourceVersion)
			}
			if got, want := (&podInterner{}).record(p), (&podInterner{}).record(wo); !reflect.DeepEqual(got.Pod, want.Pod) {
				t.Errorf("event %d: record\n%+v\nwant\n%+v", i, got.Pod, want.Pod)
			}
			if wo.Name != "" && (len(p.Annotations) > 0 || len(p.ManagedFields) > 0 || len(p.Status.Conditions) > 0 || len(p.Spec.Containers[0].Image) > 0) {
				t.Errorf("event %d: the pod was decoded whole: %+v", i, p)
			}
		case *metav1.Status:
			if s, ok := got.Object.(*metav1.Status); !ok || s.Code != wo.Code || s.Reason != wo.Reason {
				t.Errorf("event %d: %#v, want the Status %#v", i, got.Object, wo)
			}
		}
	}
}

// TestPrunedPodDecoderFallsThrough: what is not a protobuf v1 Pod is decoded
// by the protobuf serializer itself, and a corrupt pod is an error.
func TestPrunedPodDecoderFallsThrough(t *testing.T) {
	d := newPodDecoder(protobuf.NewSerializer(scheme.Scheme, scheme.Scheme))
	ns := encodeProtobuf(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"a": "b"}}})
	obj, _, err := d.Decode(ns, nil, nil)
	if n, ok := obj.(*corev1.Namespace); err != nil || !ok || n.Labels["a"] != "b" {
		t.Fatalf("a Namespace decoded as %#v (%v)", obj, err)
	}
	pod := encodeProtobuf(t, &listPods(1).Items[0])
	if _, _, err := d.Decode(pod[:len(pod)-3], nil, nil); err == nil {
		t.Errorf("a cut pod decoded")
	}
	into := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"stale": "x"}}}
	obj, _, err = d.Decode(pod, nil, into)
	if err != nil || obj != into || len(into.Annotations) != 0 || into.Name == "" {
		t.Errorf("decoding into a pod: %v, %+v", err, into.ObjectMeta)
	}
}

// BenchmarkPodWatchDecode is the agent's cost of decoding one watch event's
// pod, pruned and whole.
func BenchmarkPodWatchDecode(b *testing.B) {
	pod := encodeProtobuf(b, &listPods(1).Items[0])
	pb := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)
	for _, bc := range []struct {
		name string
		dec  runtime.Decoder
	}{{"pruned", newPodDecoder(pb)}, {"whole", pb}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := bc.dec.Decode(pod, nil, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
