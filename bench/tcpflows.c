/* Many short TCP flows for bench/walk.py, as crafted client-side frames
 * only (a DR director sees no replies): per flow a SYN, its handshake's
 * ACK and a FIN, so the director ends up holding each one closed (in
 * FIN_WAIT, and in the eBPF engine's confirmed map), as a new-connection
 * benchmark leaves them.
 *
 *   tcpflows IFACE DST_MAC SRC_IP NSRC SPORT NPORTS DST_IP DPORT CHUNK GAP_MS
 *
 * Flow i (0 <= i < NSRC*NPORTS) comes from SRC_IP + i/NPORTS, port SPORT +
 * i%NPORTS. Flows go in chunks of CHUNK: the SYNs of a chunk, GAP_MS, its
 * ACKs, GAP_MS, its FINs, GAP_MS (the gap lets the director install each
 * step before the next). Prints one JSON line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define LEN 54 /* Ethernet + IPv4 + TCP, no options, no payload */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint32_t sum16(const uint8_t *p, int n, uint32_t s) {
    for (int i = 0; i + 1 < n; i += 2) s += (p[i] << 8) | p[i + 1];
    return s;
}

static uint16_t fold(uint32_t s) {
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static int parse_mac(const char *s, uint8_t *m) {
    return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 6;
}

static uint8_t dmac[6], smac[6];
static struct in_addr src, dst;
static uint32_t nports, sport, dport;
static uint16_t ipid;

static void build(uint8_t *f, uint32_t flow, int step) {
    memset(f, 0, LEN);
    memcpy(f, dmac, 6);
    memcpy(f + 6, smac, 6);
    f[12] = 0x08;
    uint8_t *ip = f + 14;
    ip[0] = 0x45;
    ip[3] = 40;
    ip[4] = ipid >> 8; ip[5] = ipid & 0xff; ipid++;
    ip[8] = 64;
    ip[9] = 6;
    uint32_t s_be = htonl(ntohl(src.s_addr) + flow / nports);
    memcpy(ip + 12, &s_be, 4);
    memcpy(ip + 16, &dst.s_addr, 4);
    uint16_t c = fold(sum16(ip, 20, 0));
    ip[10] = c >> 8; ip[11] = c & 0xff;
    uint8_t *tcp = ip + 20;
    uint32_t sp = sport + flow % nports;
    tcp[0] = sp >> 8; tcp[1] = sp & 0xff;
    tcp[2] = dport >> 8; tcp[3] = dport & 0xff;
    /* seq: the SYN takes one, so the ACK and FIN carry seq + 1. */
    uint32_t seq = htonl(flow * 7919u + (step ? 1 : 0));
    memcpy(tcp + 4, &seq, 4);
    uint32_t ack = htonl(step ? 1 : 0);
    memcpy(tcp + 8, &ack, 4);
    tcp[12] = 5 << 4;
    tcp[13] = step == 0 ? 0x02 : step == 1 ? 0x10 : 0x11; /* SYN, ACK, FIN|ACK */
    tcp[14] = 0xff; tcp[15] = 0xff;
    uint8_t pseudo[12];
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0; pseudo[9] = 6; pseudo[10] = 0; pseudo[11] = 20;
    c = fold(sum16(tcp, 20, sum16(pseudo, 12, 0)));
    tcp[16] = c >> 8; tcp[17] = c & 0xff;
}

int main(int argc, char **argv) {
    if (argc != 11) {
        fprintf(stderr, "usage: tcpflows IFACE DST_MAC SRC_IP NSRC SPORT NPORTS DST_IP DPORT CHUNK GAP_MS\n");
        return 2;
    }
    const char *ifname = argv[1];
    if (!parse_mac(argv[2], dmac) || !inet_aton(argv[3], &src) || !inet_aton(argv[7], &dst)) {
        fprintf(stderr, "tcpflows: bad MAC or address\n");
        return 2;
    }
    uint32_t nsrc = strtoul(argv[4], 0, 10);
    sport = strtoul(argv[5], 0, 10);
    nports = strtoul(argv[6], 0, 10);
    dport = strtoul(argv[8], 0, 10);
    uint32_t chunk = strtoul(argv[9], 0, 10);
    double gap = atof(argv[10]) / 1000;
    if (nsrc == 0 || nports == 0 || chunk == 0) {
        fprintf(stderr, "tcpflows: bad flow counts\n");
        return 2;
    }
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (fd < 0) { perror("socket"); return 1; }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) { perror("SIOCGIFHWADDR"); return 1; }
    memcpy(smac, ifr.ifr_hwaddr.sa_data, 6);
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = if_nametoindex(ifname);
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) { perror("bind"); return 1; }
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

    static uint8_t frames[BATCH][LEN];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    uint32_t nflows = nsrc * nports;
    unsigned long long sent = 0, errors = 0;
    double start = now();
    for (uint32_t base = 0; base < nflows; base += chunk) {
        uint32_t end = base + chunk < nflows ? base + chunk : nflows;
        for (int step = 0; step < 3; step++) {
            for (uint32_t flow = base; flow < end;) {
                int n = 0;
                for (; n < BATCH && flow < end; n++, flow++) {
                    build(frames[n], flow, step);
                    iov[n].iov_base = frames[n];
                    iov[n].iov_len = LEN;
                    msgs[n].msg_hdr.msg_iov = &iov[n];
                    msgs[n].msg_hdr.msg_iovlen = 1;
                }
                int off = 0;
                while (off < n) {
                    int r = sendmmsg(fd, msgs + off, n - off, 0);
                    if (r < 0) {
                        if (errno == EINTR) continue;
                        if (errno == ENOBUFS || errno == EAGAIN) {
                            errors++;
                            struct timespec ts = {0, 200000};
                            nanosleep(&ts, 0);
                            continue;
                        }
                        perror("sendmmsg");
                        return 1;
                    }
                    off += r;
                    sent += r;
                }
            }
            struct timespec ts = {(time_t)gap, (long)((gap - (time_t)gap) * 1e9)};
            nanosleep(&ts, 0);
        }
    }
    double el = now() - start;
    printf("{\"flows\": %u, \"sent\": %llu, \"send_errors\": %llu, \"seconds\": %.4f}\n",
           nflows, sent, errors, el);
    return 0;
}
