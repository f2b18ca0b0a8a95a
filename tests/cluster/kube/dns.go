package main

// cluster-dns: the test cluster's DNS, just enough for pods to resolve Services.
//
// It answers A queries for SERVICE.NAMESPACE.svc.DOMAIN with the Service's cluster IP, read
// from the API server through a client-go informer, and NXDOMAIN for every other name (pods
// in the tests reach nothing outside the cluster but the test hub, by address). It listens on
// UDP only, on the bridge gateway address that the kubelet hands pods as their nameserver.

import (
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

func runClusterDNS(args []string) int {
	fs := flag.NewFlagSet("cluster-dns", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of a client allowed to list Services")
	listen := fs.String("listen", "10.244.0.1:53", "UDP address to answer on")
	domain := fs.String("domain", "cluster.local", "cluster domain")
	_ = fs.Parse(args)

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster-dns:", err)
		return 1
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster-dns:", err)
		return 1
	}
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	services := factory.Core().V1().Services()
	lister := services.Lister()
	stop := make(chan struct{})
	factory.Start(stop)
	if !cache.WaitForCacheSync(stop, services.Informer().HasSynced) {
		fmt.Fprintln(os.Stderr, "cluster-dns: the Service informer never synced")
		return 1
	}
	conn, err := net.ListenPacket("udp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster-dns:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "cluster-dns: answering for *.svc.%s on udp %s\n", *domain, *listen)
	suffix := ".svc." + strings.TrimSuffix(*domain, ".") + "."
	buf := make([]byte, 1500)
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			fmt.Fprintln(os.Stderr, "cluster-dns:", err)
			return 1
		}
		if reply, ok := answer(buf[:n], suffix, lister); ok {
			_, _ = conn.WriteTo(reply, peer)
		}
	}
}

// answer builds the reply to one query; false when the packet is not a query worth answering.
func answer(packet []byte, suffix string, lister listers.ServiceLister) ([]byte, bool) {
	var parser dnsmessage.Parser
	header, err := parser.Start(packet)
	if err != nil || header.Response {
		return nil, false
	}
	question, err := parser.Question()
	if err != nil {
		return nil, false
	}
	reply := dnsmessage.Header{ID: header.ID, Response: true, Authoritative: true, RecursionDesired: header.RecursionDesired}
	name := strings.ToLower(question.Name.String())
	var ip net.IP
	found := false
	if rest, ok := strings.CutSuffix(name, suffix); ok {
		if svcName, namespace, ok := strings.Cut(rest, "."); ok && !strings.Contains(namespace, ".") {
			if svc, err := lister.Services(namespace).Get(svcName); err == nil {
				found = true
				ip = clusterIPv4(svc)
			}
		}
	}
	if !found {
		reply.RCode = dnsmessage.RCodeNameError
	}
	builder := dnsmessage.NewBuilder(nil, reply)
	_ = builder.StartQuestions()
	_ = builder.Question(question)
	_ = builder.StartAnswers()
	if found && ip != nil && question.Type == dnsmessage.TypeA && question.Class == dnsmessage.ClassINET {
		var a dnsmessage.AResource
		copy(a.A[:], ip)
		_ = builder.AResource(dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: 5}, a)
	}
	out, err := builder.Finish()
	return out, err == nil
}

func clusterIPv4(svc *corev1.Service) net.IP {
	ip := net.ParseIP(svc.Spec.ClusterIP)
	if ip == nil {
		return nil
	}
	return ip.To4()
}
