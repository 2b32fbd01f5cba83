/*
 * netdelay: holds every packet of an NFQUEUE for a fixed delay, then accepts it — a one-way delay line for the
 * benchmark's two network namespaces, where the kernel has no sch_netem. One instance runs in each namespace, fed
 * by an nftables rule on the output hook of its veth (`oifname VETH queue num Q`), so a round trip costs twice the
 * delay while TCP itself (windows, ACK clocking, GSO) stays the kernel's. The delay is constant, so packets leave
 * in the order they came.
 *
 * Usage:  netdelay <queue-num> <delay-us>
 * Prints "ready" on stdout once bound to the queue; runs until killed.
 *
 * Build:  gcc -O2 -Wall -o netdelay netdelay.c -lnetfilter_queue -lnfnetlink
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RING (1u << 20) /* packets held at most: far above what a 5 ms delay holds at veth speed */

static uint32_t ids[RING];
static uint64_t due[RING];
static uint32_t head, tail; /* ring of held packets, oldest at head */
static uint64_t delay_ns;
static unsigned long long held_max, overflow;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data)
{
    (void)msg;
    (void)data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    if (tail - head >= RING) { /* cannot hold it: let it through now rather than lose it */
        overflow++;
        return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
    }
    ids[tail % RING] = id;
    due[tail % RING] = now_ns() + delay_ns;
    tail++;
    if (tail - head > held_max)
        held_max = tail - head;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: netdelay <queue-num> <delay-us>\n");
        return 2;
    }
    int queue = atoi(argv[1]);
    delay_ns = strtoull(argv[2], NULL, 10) * 1000ull;
    struct nfq_handle *h = nfq_open();
    if (!h) {
        perror("netdelay: nfq_open");
        return 1;
    }
    nfq_unbind_pf(h, AF_INET);
    if (nfq_bind_pf(h, AF_INET) < 0) {
        perror("netdelay: nfq_bind_pf");
        return 1;
    }
    struct nfq_q_handle *qh = nfq_create_queue(h, queue, on_packet, NULL);
    if (!qh) {
        perror("netdelay: nfq_create_queue");
        return 1;
    }
    /* Only the metadata comes up: the verdict needs the packet id, not its bytes. */
    if (nfq_set_mode(qh, NFQNL_COPY_META, 0) < 0) {
        perror("netdelay: nfq_set_mode");
        return 1;
    }
    nfq_set_queue_maxlen(qh, RING);
    int fd = nfq_fd(h);
    nfnl_rcvbufsiz(nfq_nfnlh(h), 64 << 20);
    printf("ready\n");
    fflush(stdout);

    static char buf[1 << 16];
    for (;;) {
        uint64_t now = now_ns();
        while (head != tail && due[head % RING] <= now) {
            nfq_set_verdict(qh, ids[head % RING], NF_ACCEPT, 0, NULL);
            head++;
        }
        int timeout_ms = -1;
        struct timespec ts = {0, 0};
        if (head != tail) {
            uint64_t wait = due[head % RING] - now;
            ts.tv_sec = wait / 1000000000ull;
            ts.tv_nsec = wait % 1000000000ull;
            timeout_ms = 0;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = timeout_ms < 0 ? poll(&p, 1, -1) : ppoll(&p, 1, &ts, NULL);
        if (n < 0 && errno != EINTR) {
            perror("netdelay: poll");
            return 1;
        }
        if (n > 0) {
            /* Drain what is queued without blocking. */
            for (;;) {
                ssize_t len = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (len < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                        break;
                    if (errno == ENOBUFS) { /* the kernel dropped messages: those packets are lost to it */
                        fprintf(stderr, "netdelay: ENOBUFS (queue overrun)\n");
                        continue;
                    }
                    perror("netdelay: recv");
                    return 1;
                }
                nfq_handle_packet(h, buf, (int)len);
            }
        }
    }
}
