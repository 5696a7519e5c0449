package consultest

import (
	"fmt"
	"io"
	"net"
	"strconv"
)

// ports are the loopback ports one agent listens on. They are chosen once
// and kept across Restart so clients keep working on the same address.
type ports struct {
	http    int // HTTPS instead when TLS is on: only one API listener exists
	server  int
	serfLAN int
	serfWAN int
	grpc    int
}

// freePorts picks distinct free loopback ports. All probes stay open until
// every port is picked so that no two roles get the same port; they are then
// released for consul to bind. Another process may grab one in between: Start
// retries with new ports when consul reports an address in use.
func freePorts() (p ports, err error) {
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	pick := func(udpToo bool) (int, error) {
		for range 20 {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return 0, err
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
	} {
		if *f.dst, err = pick(f.udpToo); err != nil {
			return ports{}, fmt.Errorf("picking free port: %w", err)
		}
	}
	return p, nil
}
