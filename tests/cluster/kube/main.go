// Command kube is the test cluster's Kubernetes: one binary whose first argument names the
// component (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy),
// each the cobra command the release's own cmd/<name>/app package builds, plus two helpers of
// the test cluster (cluster-dns, cri-clean). Linking them
// together compiles the shared code once. scripts/cluster.sh builds and runs it.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	_ "time/tzdata" // CronJob time zones, as cmd/kube-apiserver and cmd/kube-controller-manager do

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // the build-info metric

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
	"kube-proxy":              proxy.NewProxyCommand,
}

// The test cluster's own helpers (plain flag parsing, not Kubernetes components).
var tools = map[string]func([]string) int{
	"cluster-dns": runClusterDNS,
	"cri-clean":   runCRIClean,
}

func main() {
	// `kube COMPONENT FLAGS...`, or a link named after the component (busybox style).
	name, args := filepath.Base(os.Args[0]), os.Args[1:]
	if _, ok := components[name]; !ok && len(args) > 0 {
		name, args = args[0], args[1:]
	}
	if tool, ok := tools[name]; ok {
		os.Exit(tool(args))
	}
	newCommand, ok := components[name]
	if !ok {
		names := make([]string, 0, len(components)+len(tools))
		for n := range components {
			names = append(names, n)
		}
		for n := range tools {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: kube COMPONENT [FLAGS]\ncomponents: %v\n", names)
		os.Exit(2)
	}
	command := newCommand()
	command.SetArgs(args)
	os.Exit(cli.Run(command))
}
