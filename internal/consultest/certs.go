package consultest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// GenerateCerts writes a fresh CA and a server certificate signed by it,
// valid for 127.0.0.1, localhost and server.dc1.consul, into a temporary
// directory, for WithTLS. It returns the PEM file paths.
func GenerateCerts(t testing.TB) (caFile, certFile, keyFile string) {
	t.Helper()
	caFile, certFile, keyFile, err := WriteCerts(t.TempDir())
	if err != nil {
		t.Fatalf("consultest.GenerateCerts: %v", err)
	}
	return caFile, certFile, keyFile
}

// WriteCerts is GenerateCerts for programs that are not tests (make bench):
// it writes the files into dir.
func WriteCerts(dir string) (caFile, certFile, keyFile string, err error) {
	// Backdated so that clock skew cannot make them not yet valid.
	notBefore := time.Now().Add(-time.Hour)
	notAfter := time.Now().Add(24 * time.Hour)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "consultest CA"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", "", err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return "", "", "", err
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "server.dc1.consul"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Client auth too: Consul uses the same certificate for outgoing
		// connections when told to verify them.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost", "server.dc1.consul"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return "", "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", "", err
	}

	files := []struct {
		name, typ string
		der       []byte
		path      *string
	}{
		{"ca.pem", "CERTIFICATE", caDER, &caFile},
		{"server.pem", "CERTIFICATE", der, &certFile},
		{"server-key.pem", "PRIVATE KEY", keyDER, &keyFile},
	}
	for _, f := range files {
		*f.path = filepath.Join(dir, f.name)
		if err := os.WriteFile(*f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			return "", "", "", err
		}
	}
	return caFile, certFile, keyFile, nil
}
