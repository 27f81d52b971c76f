/* Bounded UDP flood for `make bench`: crafted Ethernet/IPv4/UDP frames sent
 * with sendmmsg on an AF_PACKET socket, so one core can offer far more
 * packets than the director can take, over many distinct flows.
 *
 *   flood IFACE DST_MAC SRC_IP NSRC SPORT NPORTS DST_IP DPORT LEN PPS COUNT SECONDS
 *
 * Flow i (0 <= i < NSRC*NPORTS) comes from SRC_IP + i/NPORTS, port SPORT + i%NPORTS.
 * LEN is the frame length (>= 42), PPS 0 means as fast as possible; stops
 * after COUNT frames or SECONDS, whichever comes first. Prints one JSON line.
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
#define MAXLEN 1514

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint16_t csum(const uint8_t *p, int n) {
    uint32_t s = 0;
    for (int i = 0; i + 1 < n; i += 2) s += (p[i] << 8) | p[i + 1];
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static int parse_mac(const char *s, uint8_t *m) {
    return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 6;
}

int main(int argc, char **argv) {
    if (argc != 13) {
        fprintf(stderr, "usage: flood IFACE DST_MAC SRC_IP NSRC SPORT NPORTS DST_IP DPORT LEN PPS COUNT SECONDS\n");
        return 2;
    }
    const char *ifname = argv[1];
    uint8_t dmac[6], smac[6];
    struct in_addr src, dst;
    if (!parse_mac(argv[2], dmac) || !inet_aton(argv[3], &src) || !inet_aton(argv[7], &dst)) {
        fprintf(stderr, "flood: bad MAC or address\n");
        return 2;
    }
    uint32_t nsrc = strtoul(argv[4], 0, 10), sport = strtoul(argv[5], 0, 10);
    uint32_t nports = strtoul(argv[6], 0, 10), dport = strtoul(argv[8], 0, 10);
    int len = atoi(argv[9]);
    double pps = atof(argv[10]), seconds = atof(argv[12]);
    unsigned long long count = strtoull(argv[11], 0, 10);
    if (len < 42 || len > MAXLEN || nsrc == 0 || nports == 0) {
        fprintf(stderr, "flood: bad length or flow counts\n");
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

    static uint8_t frames[BATCH][MAXLEN];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    uint32_t nflows = nsrc * nports, flow = 0;
    uint16_t ipid = 0;
    unsigned long long sent = 0, errors = 0;
    double start = now(), deadline = start + seconds;
    while (sent < count) {
        double t = now();
        if (t >= deadline) break;
        if (pps > 0) {
            double due = start + sent / pps;
            if (due > t) {
                struct timespec ts = {0, (long)((due - t) * 1e9)};
                nanosleep(&ts, 0);
                continue;
            }
        }
        int n = BATCH;
        if (count - sent < (unsigned long long)n) n = (int)(count - sent);
        for (int k = 0; k < n; k++) {
            uint8_t *f = frames[k];
            memset(f, 0, len);
            memcpy(f, dmac, 6);
            memcpy(f + 6, smac, 6);
            f[12] = 0x08;
            uint8_t *ip = f + 14;
            int iplen = len - 14;
            ip[0] = 0x45;
            ip[2] = iplen >> 8; ip[3] = iplen & 0xff;
            ip[4] = ipid >> 8; ip[5] = ipid & 0xff; ipid++;
            ip[8] = 64;
            ip[9] = 17;
            uint32_t s = ntohl(src.s_addr) + flow / nports;
            uint32_t sp = sport + flow % nports;
            uint32_t s_be = htonl(s);
            memcpy(ip + 12, &s_be, 4);
            memcpy(ip + 16, &dst.s_addr, 4);
            uint16_t c = csum(ip, 20);
            ip[10] = c >> 8; ip[11] = c & 0xff;
            uint8_t *udp = ip + 20;
            int ulen = iplen - 20;
            udp[0] = sp >> 8; udp[1] = sp & 0xff;
            udp[2] = dport >> 8; udp[3] = dport & 0xff;
            udp[4] = ulen >> 8; udp[5] = ulen & 0xff;
            /* UDP checksum 0: none (legal for IPv4). */
            iov[k].iov_base = f;
            iov[k].iov_len = len;
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            flow = (flow + 1) % nflows;
        }
        int off = 0;
        while (off < n) {
            int r = sendmmsg(fd, msgs + off, n - off, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                if (errno == ENOBUFS || errno == EAGAIN) { errors++; off++; continue; }
                perror("sendmmsg");
                return 1;
            }
            off += r;
            sent += r;
        }
    }
    double el = now() - start;
    printf("{\"sent\": %llu, \"send_errors\": %llu, \"seconds\": %.4f, \"offered_pps\": %.0f}\n",
           sent, errors, el, el > 0 ? sent / el : 0.0);
    return 0;
}
