// Command pstest-server runs the in-memory Pub/Sub fake from the Go cloud
// library (cloud.google.com/go/pubsub/pstest) as a standalone gRPC server,
// a fallback for machines without Google's Java Pub/Sub emulator.
//
// Built offline by emulators/install.sh from Debian packages:
//
//	apt-get install -y golang-go golang-google-cloud-dev
//	GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off go build -o pstest-server main.go
//
// Debian 12 ships cloud.google.com/go 0.56 (2020), whose pstest has no
// NewServerWithPort. pstest.NewServer() listens on a random localhost port, so
// this program serves the same GServer (same topics/subscriptions/messages) on
// our own listener as well; the random-port listener is left alone and unused.
//
// Quirk fixed here: this pstest rejects ack_deadline_seconds=0 ("invalid ack
// deadline") while the real service treats 0 as "use the default (10 s)".
// Beam's ReadFromPubSub(topic=...) creates its own subscription with 0, so a
// unary interceptor rewrites 0 to -default-ack-deadline before pstest sees it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"cloud.google.com/go/pubsub/pstest"
	pb "google.golang.org/genproto/googleapis/pubsub/v1"
	"google.golang.org/grpc"
)

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 8085, "port to listen on")
	defAck := flag.Int("default-ack-deadline", 10, "ack deadline (s) used when a subscription asks for 0")
	flag.Parse()

	fake := pstest.NewServer() // in-memory state; its own listener is unused

	fixAck := func(ctx context.Context, req interface{}, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (interface{}, error) {
		switch r := req.(type) {
		case *pb.Subscription: // CreateSubscription
			if r.AckDeadlineSeconds == 0 {
				r.AckDeadlineSeconds = int32(*defAck)
			}
		case *pb.UpdateSubscriptionRequest:
			if r.Subscription != nil && r.Subscription.AckDeadlineSeconds == 0 && r.UpdateMask != nil {
				for _, p := range r.UpdateMask.Paths {
					if p == "ack_deadline_seconds" {
						r.Subscription.AckDeadlineSeconds = int32(*defAck)
					}
				}
			}
		}
		return h(ctx, req)
	}

	gsrv := grpc.NewServer(grpc.UnaryInterceptor(fixAck))
	pb.RegisterPublisherServer(gsrv, &fake.GServer)
	pb.RegisterSubscriberServer(gsrv, &fake.GServer)

	addr := net.JoinHostPort(*host, fmt.Sprint(*port))
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("pstest-server: listen %s: %v", addr, err)
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		log.Printf("pstest-server: shutting down")
		gsrv.Stop()
		fake.Close()
		os.Exit(0)
	}()
	log.Printf("pstest-server: Server started, listening on %s", addr)
	if err := gsrv.Serve(lis); err != nil {
		log.Fatalf("pstest-server: %v", err)
	}
}
