// A load client built on grpc-go, the gateway's own gRPC library, dialled as the gateway dials its
// plugin server (gateway/coprocess_grpc.go): plaintext, round robin over the plugin's addresses,
// no health checking, no retry policy, no wait-for-ready. Here the address list is fixed, as the
// gateway's is between two DNS resolutions.
//
// It keeps -in-flight Dispatch calls going with the serialised coprocess.Object in -payload (a
// pass-through codec: no generated code) and prints "ok N failed M by ADDRESS=N,..." (the calls
// each replica answered) every 100 ms, and a last line "done ok N failed M codes ..." once its
// standard input closes.
//
// Built by the tests in GOPATH mode (GO111MODULE=off) against Debian's golang-google-grpc-dev.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
)

// raw passes serialised messages through as they are.
type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (raw) Name() string { return "proto" }

func main() {
	targets := flag.String("targets", "", "comma-separated host:port of the plugin's replicas")
	inFlight := flag.Int("in-flight", 32, "calls kept in flight")
	payloadFile := flag.String("payload", "", "a serialised coprocess.Object")
	flag.Parse()
	payload, err := ioutil.ReadFile(*payloadFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	fixed := manual.NewBuilderWithScheme("fixed")
	var addresses []resolver.Address
	for _, target := range strings.Split(*targets, ",") {
		addresses = append(addresses, resolver.Address{Addr: target})
	}
	fixed.InitialState(resolver.State{Addresses: addresses})
	conn, err := grpc.Dial("fixed:///plugin",
		grpc.WithInsecure(),
		grpc.WithResolvers(fixed),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin": {}}]}`),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	var ok, failed int64
	var mu sync.Mutex
	codes := map[string]int{}
	answered := map[string]int{}
	var stop int32
	var wg sync.WaitGroup
	for i := 0; i < *inFlight; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for atomic.LoadInt32(&stop) == 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				request, reply := payload, []byte(nil)
				var from peer.Peer
				err := conn.Invoke(ctx, "/coprocess.Dispatcher/Dispatch", &request, &reply, grpc.ForceCodec(raw{}), grpc.Peer(&from))
				cancel()
				if err == nil {
					atomic.AddInt64(&ok, 1)
					mu.Lock()
					answered[from.Addr.String()]++
					mu.Unlock()
					continue
				}
				atomic.AddInt64(&failed, 1)
				mu.Lock()
				codes[status.Code(err).String()+": "+status.Convert(err).Message()]++
				mu.Unlock()
			}
		}()
	}

	go func() {
		for atomic.LoadInt32(&stop) == 0 {
			mu.Lock()
			var by []string
			for address, count := range answered {
				by = append(by, fmt.Sprintf("%s=%d", address, count))
			}
			mu.Unlock()
			fmt.Printf("ok %d failed %d by %s\n", atomic.LoadInt64(&ok), atomic.LoadInt64(&failed), strings.Join(by, ","))
			time.Sleep(100 * time.Millisecond)
		}
	}()
	bufio.NewReader(os.Stdin).ReadString(0) // until standard input closes
	atomic.StoreInt32(&stop, 1)
	wg.Wait()
	mu.Lock()
	var summary []string
	for code, count := range codes {
		summary = append(summary, fmt.Sprintf("%d× %s", count, code))
	}
	sort.Strings(summary)
	fmt.Printf("done ok %d failed %d codes %s\n", ok, failed, strings.Join(summary, "; "))
}
