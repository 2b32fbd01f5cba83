/*
 * epochs.c: a workload whose memory changes from one generation to the next and which verifies it for the
 * generation it is in, for the replication tests (test/e2e/replicate.test.ts).
 *
 * Build:  gcc -O2 -Wall -o epochs epochs.c
 * Usage:  epochs <dir> <MiB> <seed> <classes> [--interval-ms M] [--verify-on-request 1]
 *
 * Memory: <MiB> of private anonymous memory; page p, word w holds mix(seed, g, p, w) where g is the last
 * generation that wrote page p. Generation 0 fills every page; generation g >= 1 rewrites the pages p with
 * p % classes == g % classes (classes 10: 10 % of the memory per generation; 1: all of it).
 * Every --interval-ms (default 50) the main loop verifies every page for the current generation and logs
 *     verify pid <getpid> gen <g> ok <pages> bad <k>
 * (with --verify-on-request 1: only when <dir>/do-verify exists, which it deletes; the benchmark's 512 MiB would
 * keep a core busy otherwise), then, when <dir>/do-next exists, deletes it, writes generation g+1 and logs
 *     gen <g+1> written
 * Files (open O_APPEND + one write + close per line, so no fd stays open): ready (tmp + rename), log.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)

static uint64_t mix(uint64_t seed, uint64_t gen, uint64_t page, uint64_t word)
{
    uint64_t z = seed * 0x9e3779b97f4a7c15ull ^ gen * 0xc2b2ae3d27d4eb4full ^ page * 0x165667b19e3779f9ull ^ word;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void line(const char *file, const char *text)
{
    int fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    ssize_t n = write(fd, text, strlen(text));
    (void)n;
    close(fd);
}

/* The last generation <= g that wrote page p. */
static uint64_t last_gen(uint64_t g, uint64_t p, uint64_t classes)
{
    if (g == 0)
        return 0;
    uint64_t r = p % classes;
    uint64_t back = (g % classes + classes - r) % classes;
    return back >= g ? 0 : g - back;
}

static void write_gen(uint64_t *mem, uint64_t pages, uint64_t seed, uint64_t g, uint64_t classes)
{
    for (uint64_t p = 0; p < pages; p++) {
        if (g != 0 && p % classes != g % classes)
            continue;
        for (uint64_t w = 0; w < WORDS; w++)
            mem[p * WORDS + w] = mix(seed, g, p, w);
    }
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: epochs <dir> <MiB> <seed> <classes> [--interval-ms M]\n");
        return 2;
    }
    if (chdir(argv[1]) != 0) {
        perror("chdir");
        return 2;
    }
    uint64_t pages = strtoull(argv[2], NULL, 10) * 256;
    uint64_t seed = strtoull(argv[3], NULL, 10);
    uint64_t classes = strtoull(argv[4], NULL, 10);
    long interval_ms = 50;
    int on_request = 0;
    for (int i = 5; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--interval-ms"))
            interval_ms = strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--verify-on-request"))
            on_request = atoi(argv[i + 1]);
    }
    if (pages == 0 || classes == 0) {
        fprintf(stderr, "epochs: <MiB> and <classes> must be positive\n");
        return 2;
    }
    uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    madvise(mem, pages * PAGE, MADV_NOHUGEPAGE);
    uint64_t gen = 0;
    write_gen(mem, pages, seed, 0, classes);
    char text[256];
    snprintf(text, sizeof text, "pid %d pages %llu\n", getpid(), (unsigned long long)pages);
    line("ready.tmp", text);
    rename("ready.tmp", "ready");
    for (;;) {
        uint64_t ok = 0, bad = 0;
        int verify = !on_request || unlink("do-verify") == 0;
        for (uint64_t p = 0; verify && p < pages; p++) {
            uint64_t g = last_gen(gen, p, classes);
            int good = 1;
            for (uint64_t w = 0; w < WORDS; w++)
                if (mem[p * WORDS + w] != mix(seed, g, p, w)) {
                    good = 0;
                    break;
                }
            if (good)
                ok++;
            else
                bad++;
        }
        snprintf(text, sizeof text, "verify pid %d gen %llu ok %llu bad %llu\n", getpid(), (unsigned long long)gen,
                 (unsigned long long)ok, (unsigned long long)bad);
        if (verify)
            line("log", text);
        if (unlink("do-next") == 0) {
            write_gen(mem, pages, seed, ++gen, classes);
            snprintf(text, sizeof text, "gen %llu written\n", (unsigned long long)gen);
            line("log", text);
        }
        struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}
