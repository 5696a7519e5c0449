package consultest

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// ports are the loopback ports one agent listens on. They are chosen once
// and kept across Restart so clients keep working on the same address.
type ports struct {
	http    int // HTTPS instead with WithTLS
	https   int // with WithHTTPS: HTTPS next to plain HTTP
	server  int
	serfLAN int
	serfWAN int
	grpc    int
}

// freePorts picks distinct free loopback ports. All probes stay open until
// every port is picked so that no two roles get the same port; they are then
// released for consul to bind. Another process may grab one in between: Start
// retries with new ports when consul reports an address in use.
//
// The ports come from below the kernel's ephemeral range: a port from that
// range, freed while Restart stops the agent, can be taken by any outgoing
// connection on the machine, and the agent could not come back on it.
func freePorts() (p ports, err error) {
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	high := ephemeralStart()
	pick := func(udpToo bool) (int, error) {
		for range 50 {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(lowPort+rand.IntN(high-lowPort))))
			if err != nil {
				continue // in use
			}
			held = append(held, l)
			port := l.Addr().(*net.TCPAddr).Port
			if !udpToo {
				return port, nil
			}
			// Serf gossips over UDP and TCP on the same port number.
			u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				continue
			}
			held = append(held, u)
			return port, nil
		}
		return 0, fmt.Errorf("no free loopback port with both TCP and UDP")
	}
	for _, f := range []struct {
		dst    *int
		udpToo bool
	}{
		{&p.http, false},
		{&p.server, false},
		{&p.serfLAN, true},
		{&p.serfWAN, true},
		{&p.grpc, false},
		{&p.https, false},
	} {
		if *f.dst, err = pick(f.udpToo); err != nil {
			return ports{}, fmt.Errorf("picking free port: %w", err)
		}
	}
	return p, nil
}

// lowPort is the bottom of the range ports are picked from.
const lowPort = 10000

// ephemeralStart returns where the kernel's range of ports for outgoing
// connections begins (Linux's default when it cannot be read).
func ephemeralStart() int {
	start := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > lowPort+1000 {
				start = n
			}
		}
	}
	return start
}
