// A stand-in for `criu restore --lazy-pages` that speaks only the local hand-over (docs/protocol.md §3.2): connect
// to <work dir>/lazy-pages.socket, send "pid" + a fresh userfaultfd for each given image pid, and then, unlike
// criu, never send RSTF: it just sleeps. The daemon must time out (RSTF timeout) and, with --on-failure kill,
// kill this process (the sender of the hand-overs). Written in C because node cannot pass fds over a socket.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../../src/paths.js';
import { Proc, runCommand } from './process.js';

const SOURCE = String.raw`
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

static void send_all(int s, const void *p, size_t n) {
    if (send(s, p, n, MSG_NOSIGNAL) != (ssize_t)n) { perror("send"); exit(1); }
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: fake-restore <socket> <pid>...\n"); return 2; }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof(a.sun_path)) { fprintf(stderr, "socket path too long\n"); return 2; }
    strcpy(a.sun_path, argv[1]);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) { perror("connect"); return 1; }
    for (int i = 2; i < argc; i++) {
        int pid = atoi(argv[i]);
        int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
        if (uffd < 0) { perror("userfaultfd"); return 1; }
        struct uffdio_api api = {.api = UFFD_API};
        if (ioctl(uffd, UFFDIO_API, &api) < 0) { perror("UFFDIO_API"); return 1; }
        send_all(s, &pid, sizeof(pid));
        char byte = 0;
        struct iovec iov = {&byte, 1};
        union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
        memset(&u, 0, sizeof(u));
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &uffd, sizeof(int));
        if (sendmsg(s, &m, MSG_NOSIGNAL) != 1) { perror("sendmsg"); return 1; }
        close(uffd);
    }
    printf("handed over %d task(s) as pid %d; no RSTF will follow\n", argc - 2, (int)getpid());
    fflush(stdout);
    for (;;) pause();
}
`;

/** Compiles the fake restore once per source version into build/workload/ and returns the binary's path. */
export async function buildFakeRestore(): Promise<string> {
  const hash = createHash('sha256').update(SOURCE).digest('hex').slice(0, 12);
  const outDir = path.join(repoRoot(), 'build', 'workload');
  const binary = path.join(outDir, `fake-restore-${hash}`);
  if (fs.existsSync(binary)) return binary;
  fs.mkdirSync(outDir, { recursive: true });
  const src = path.join(outDir, `fake-restore-${hash}.c`);
  fs.writeFileSync(src, SOURCE);
  const tmp = `${binary}.tmp-${process.pid}`;
  await runCommand({ name: 'gcc (fake-restore)', file: 'gcc', args: ['-O2', '-Wall', '-o', tmp, src] }, 60_000);
  fs.renameSync(tmp, binary);
  return binary;
}

/** Starts the fake restore against `socketPath`, handing over `pids`; it runs until killed. */
export async function startFakeRestore(socketPath: string, pids: number[]): Promise<Proc> {
  const binary = await buildFakeRestore();
  return new Proc({ name: 'fake restore (no RSTF)', file: binary, args: [socketPath, ...pids.map(String)] }, ['ignore', 'pipe', 'pipe']);
}
