/*
 * netdelay: holds every packet of an NFQUEUE for a fixed delay, then accepts it — a one-way delay line for the
 * benchmark's two network namespaces, where the kernel has no sch_netem. One instance runs in each namespace, fed
 * by an nftables rule on the output hook of its veth (`oifname VETH queue num Q`), so a round trip costs twice the
 * delay while TCP itself (windows, ACK clocking, GSO) stays the kernel's. The delay is constant, so packets leave
 * in the order they came, released by one batch verdict per pass; the process runs SCHED_FIFO with a timer slack
 * of 1 ns, so neither the hosts' load nor a late wake-up lengthens the delay.
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
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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

/* Accepts every held packet whose time has come. They are due in the order they came, and the kernel numbers a
 * queue's packets in that order too, so one batch verdict (every id up to the last due one) releases them all:
 * one system call per pass, not one per packet, which under a bulk stream was this process's whole load. */
static void release_due(struct nfq_q_handle *qh)
{
    uint64_t now = now_ns();
    uint32_t last = head;
    while (last != tail && due[last % RING] <= now)
        last++;
    if (last == head)
        return;
    nfq_set_verdict_batch(qh, ids[(last - 1) % RING], NF_ACCEPT);
    head = last;
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
    /* A wire is not slowed by the hosts' CPUs, and netem (which this stands in for) runs in softirq, ahead of
     * every task: run ahead of the workloads and daemons that share these CPUs, and wake on time (the default
     * timer slack lets a sleep end up to 50 µs late). Its own CPU is a few system calls per pass. */
    struct sched_param rt = {.sched_priority = 1};
    if (sched_setscheduler(0, SCHED_FIFO, &rt) < 0)
        fprintf(stderr, "netdelay: SCHED_FIFO: %s (the delay then also waits for a CPU)\n", strerror(errno));
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    printf("ready\n");
    fflush(stdout);

    static char buf[1 << 16];
    for (;;) {
        release_due(qh);
        int timeout_ms = -1;
        struct timespec ts = {0, 0};
        if (head != tail) {
            uint64_t now = now_ns(), when = due[head % RING];
            uint64_t wait = when > now ? when - now : 0;
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
            /* Take what is queued without blocking, releasing what falls due meanwhile: under a steady stream
             * this loop can run for long, and a due packet must not wait for it to end. */
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
                release_due(qh);
            }
        }
    }
}
