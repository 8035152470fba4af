/*
 * corral-init: the small native half of a Corral sandbox.
 *
 *   corral-init launch --uid N --gid N [--cgroup FILE]... [--netns PATH] -- PROGRAM ARGS...
 *       Runs as root on the host. Joins the sandbox's cgroups (so bwrap and everything
 *       it starts is limited from its first instruction), optionally enters a prepared
 *       network namespace, drops to the sandbox's unprivileged uid/gid with no
 *       supplementary groups and no_new_privs, then execs PROGRAM (bwrap).
 *
 *   corral-init serve [REPORT_FD]
 *       Runs inside the sandbox as PID 1 (bwrap --as-pid-1). Reads framed requests on
 *       fd 0, runs commands, streams their output and exit status on fd 1. As the pid
 *       namespace's init it cannot be killed from inside, and it reaps every orphan.
 *
 * Wire format, both ways: u32 little-endian length of (type byte + payload), type, payload.
 * Written in C because it sits on the hot path of sandbox start and every exec.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL_VERSION 1
#define MAX_JOBS 256
#define MAX_DRAIN 512
#define MAX_FRAME (1u << 30)

enum { REQ_EXEC = 'E', REQ_KILL = 'K' };
enum { RSP_READY = 'R', RSP_STARTED = 'S', RSP_OUT = 'O', RSP_EXIT = 'X' };
enum { FLAG_TRUNCATED = 1, FLAG_TIMED_OUT = 2, FLAG_SPAWN_FAILED = 4 };

static void die(const char *what) {
    fprintf(stderr, "corral-init: %s: %s\n", what, strerror(errno));
    _exit(121);
}

/* ------------------------------------------------------------------ launch */

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) die(path);
    ssize_t n = write(fd, text, strlen(text));
    if (n < 0) die(path);
    close(fd);
}

static int launch(int argc, char **argv) {
    long uid = -1, gid = -1;
    const char *netns = NULL;
    char pid_text[32];
    snprintf(pid_text, sizeof pid_text, "%d\n", getpid());
    int i = 0;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--")) { i++; break; }
        if (i + 1 >= argc) { fprintf(stderr, "corral-init: %s needs a value\n", argv[i]); return 120; }
        if (!strcmp(argv[i], "--uid")) uid = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--gid")) gid = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--cgroup")) write_file(argv[++i], pid_text);
        else if (!strcmp(argv[i], "--netns")) netns = argv[++i];
        else { fprintf(stderr, "corral-init: unknown option %s\n", argv[i]); return 120; }
    }
    if (uid <= 0 || gid <= 0 || i >= argc) {
        fprintf(stderr, "corral-init: launch needs --uid, --gid (non-root) and a program\n");
        return 120;
    }
    if (netns) {
        int fd = open(netns, O_RDONLY | O_CLOEXEC);
        if (fd < 0) die(netns);
        if (setns(fd, CLONE_NEWNET) < 0) die("setns");
        close(fd);
    }
    /* Order matters: groups and gid while still root, uid last. */
    if (setgroups(0, NULL) < 0) die("setgroups");
    if (setresgid(gid, gid, gid) < 0) die("setresgid");
    if (setresuid(uid, uid, uid) < 0) die("setresuid");
    if (getuid() == 0 || geteuid() == 0) { fprintf(stderr, "corral-init: still root\n"); return 120; }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("no_new_privs");
    /* No core dumps: with a piped core_pattern the dump helper would run as root on the host. */
    struct rlimit no_core = {0, 0};
    if (setrlimit(RLIMIT_CORE, &no_core) < 0) die("rlimit_core");
    /* Credentials changed, which clears the death signal: set it again. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) die("pdeathsig");
    execv(argv[i], &argv[i]);
    die(argv[i]);
    return 121;
}

/* ------------------------------------------------------------------- serve */

struct job {
    int used;
    uint32_t id;
    pid_t pid;
    int out_fd, err_fd, in_fd;
    char *in_buf;
    size_t in_len, in_off;
    uint64_t deadline_ms; /* 0: none */
    uint64_t cap, forwarded, out_total, err_total;
    int truncated, timed_out, spawn_failed, exited;
    int status;
    struct rusage ru;
};

static struct job jobs[MAX_JOBS];
/* Datagram socket to the host: each command's process reports itself here with
 * SCM_CREDENTIALS, which the kernel translates into the host's pid namespace. */
static int report_fd = -1;
static int drain_fds[MAX_DRAIN];
static int n_drain;
static char *inbuf;
static size_t in_len, in_cap;

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                poll(&pfd, 1, -1);
                continue;
            }
            _exit(0); /* host is gone: the sandbox ends with it */
        }
        p += n;
        len -= (size_t)n;
    }
}

static void send_frame(char type, const void *a, size_t alen, const void *b, size_t blen) {
    uint32_t len = (uint32_t)(1 + alen + blen);
    char head[5];
    memcpy(head, &len, 4);
    head[4] = type;
    write_all(1, head, 5);
    if (alen) write_all(1, a, alen);
    if (blen) write_all(1, b, blen);
}

static void put_u32(char **p, uint32_t v) { memcpy(*p, &v, 4); *p += 4; }
static void put_u64(char **p, uint64_t v) { memcpy(*p, &v, 8); *p += 8; }

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void add_drain(int fd) {
    if (fd < 0) return;
    if (n_drain == MAX_DRAIN) { close(fd); return; }
    drain_fds[n_drain++] = fd;
}

/* Forward what a job's pipe holds now. Returns 0 at EOF, 1 otherwise. */
static int pump(struct job *j, int stream) {
    int *fdp = stream == 1 ? &j->out_fd : &j->err_fd;
    char buf[65536];
    for (;;) {
        ssize_t n = read(*fdp, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return 1;
            n = 0;
        }
        if (n == 0) {
            close(*fdp);
            *fdp = -1;
            return 0;
        }
        if (stream == 1) j->out_total += (uint64_t)n; else j->err_total += (uint64_t)n;
        size_t keep = 0;
        if (j->forwarded < j->cap) {
            keep = (size_t)n;
            if (j->forwarded + keep > j->cap) keep = (size_t)(j->cap - j->forwarded);
        }
        if (keep < (size_t)n) j->truncated = 1;
        if (keep) {
            char head[5], *p = head;
            put_u32(&p, j->id);
            *p = (char)stream;
            send_frame(RSP_OUT, head, 5, buf, keep);
            j->forwarded += keep;
        }
    }
}

static void finish(struct job *j) {
    if (j->out_fd >= 0 && pump(j, 1)) { add_drain(j->out_fd); j->out_fd = -1; }
    if (j->err_fd >= 0 && pump(j, 2)) { add_drain(j->err_fd); j->err_fd = -1; }
    if (j->in_fd >= 0) { close(j->in_fd); j->in_fd = -1; }
    free(j->in_buf);
    j->in_buf = NULL;
    char body[4 + 4 + 1 + 5 * 8], *p = body;
    put_u32(&p, j->id);
    int32_t st = j->status;
    memcpy(p, &st, 4); p += 4;
    *p++ = (char)((j->truncated ? FLAG_TRUNCATED : 0) | (j->timed_out ? FLAG_TIMED_OUT : 0) |
                  (j->spawn_failed ? FLAG_SPAWN_FAILED : 0));
    put_u64(&p, (uint64_t)j->ru.ru_utime.tv_sec * 1000000u + (uint64_t)j->ru.ru_utime.tv_usec);
    put_u64(&p, (uint64_t)j->ru.ru_stime.tv_sec * 1000000u + (uint64_t)j->ru.ru_stime.tv_usec);
    put_u64(&p, (uint64_t)j->ru.ru_maxrss);
    put_u64(&p, j->out_total);
    put_u64(&p, j->err_total);
    send_frame(RSP_EXIT, body, sizeof body, NULL, 0);
    j->used = 0;
}

/* Kill a job's process group and every process descended from it. */
static void kill_tree(pid_t root, int sig) {
    pid_t pids[4096], ppids[4096];
    int n = 0;
    DIR *d = opendir("/proc");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) && n < 4096) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
            char path[300], text[512];
            snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            ssize_t len = read(fd, text, sizeof text - 1);
            close(fd);
            if (len <= 0) continue;
            text[len] = 0;
            char *rp = strrchr(text, ')'); /* comm may hold spaces and parens */
            if (!rp) continue;
            int ppid;
            char state;
            if (sscanf(rp + 2, "%c %d", &state, &ppid) != 2) continue;
            pids[n] = atoi(e->d_name);
            ppids[n++] = ppid;
        }
        closedir(d);
    }
    pid_t todo[4096];
    int head = 0, tail = 0;
    todo[tail++] = root;
    while (head < tail) {
        pid_t p = todo[head++];
        kill(p, sig);
        for (int i = 0; i < n && tail < 4096; i++)
            if (ppids[i] == p && pids[i] != p) todo[tail++] = pids[i];
    }
    kill(-root, sig);
}

static int read_str(const char **p, const char *end, char **out) {
    uint32_t len;
    if (end - *p < 4) return -1;
    memcpy(&len, *p, 4);
    *p += 4;
    if ((size_t)(end - *p) < len) return -1;
    *out = malloc(len + 1);
    if (!*out) return -1;
    memcpy(*out, *p, len);
    (*out)[len] = 0;
    *p += len;
    return (int)len;
}

/* Runs in the command's process before exec: the host learns its host pid even if the
 * command exits a microsecond later. */
static void report_self(uint32_t id) {
    struct ucred cred = {.pid = getpid(), .uid = getuid(), .gid = getgid()};
    char control[CMSG_SPACE(sizeof cred)];
    memset(control, 0, sizeof control);
    struct iovec iov = {.iov_base = &id, .iov_len = sizeof id};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_CREDENTIALS;
    cm->cmsg_len = CMSG_LEN(sizeof cred);
    memcpy(CMSG_DATA(cm), &cred, sizeof cred);
    ssize_t sent = sendmsg(report_fd, &msg, MSG_DONTWAIT);
    (void)sent; /* best effort: the host falls back to a /proc lookup */
}

static void child_fail(const char *what, const char *arg) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "corral: %s %s: %s\n", what, arg, strerror(errno));
    if (n > 0) { ssize_t w = write(2, msg, (size_t)n); (void)w; }
    _exit(errno == ENOENT ? 127 : 126);
}

static void start_job(const char *p, const char *end) {
    struct job *j = NULL;
    for (int i = 0; i < MAX_JOBS; i++) if (!jobs[i].used) { j = &jobs[i]; break; }
    uint32_t id, timeout_ms, argc, envc;
    uint64_t cap;
    if (end - p < 24) return;
    memcpy(&id, p, 4); memcpy(&timeout_ms, p + 4, 4); memcpy(&cap, p + 8, 8);
    memcpy(&argc, p + 16, 4); memcpy(&envc, p + 20, 4);
    p += 24;
    if (!j || argc == 0 || argc > 65536 || envc > 65536) {
        struct job fail = {.id = id, .out_fd = -1, .err_fd = -1, .in_fd = -1,
                           .status = 126 << 8, .spawn_failed = 1};
        finish(&fail);
        return;
    }
    char *cwd = NULL, *stdin_data = NULL;
    char **av = calloc(argc + 1, sizeof *av), **ev = calloc(envc + 1, sizeof *ev);
    int ok = av && ev && read_str(&p, end, &cwd) >= 0;
    for (uint32_t i = 0; ok && i < argc; i++) ok = read_str(&p, end, &av[i]) >= 0;
    for (uint32_t i = 0; ok && i < envc; i++) ok = read_str(&p, end, &ev[i]) >= 0;
    int stdin_len = ok ? read_str(&p, end, &stdin_data) : -1;

    memset(j, 0, sizeof *j);
    j->id = id;
    j->cap = cap;
    j->out_fd = j->err_fd = j->in_fd = -1;
    int out[2] = {-1, -1}, err[2] = {-1, -1}, in[2] = {-1, -1};
    if (stdin_len < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 ||
        (stdin_len > 0 && pipe2(in, O_CLOEXEC) < 0)) {
        j->status = 126 << 8;
        j->spawn_failed = 1;
        goto fail;
    }
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        setsid();
        int devnull = stdin_len > 0 ? in[0] : open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        if (report_fd >= 0) report_self(id);
        syscall(SYS_close_range, 3, ~0U, 0);
        if (chdir(cwd) < 0) child_fail("cannot enter directory", cwd);
        execvpe(av[0], av, ev);
        child_fail("cannot run", av[0]);
    }
    if (pid < 0) {
        j->status = 126 << 8;
        j->spawn_failed = 1;
        goto fail;
    }
    j->used = 1;
    j->pid = pid;
    j->deadline_ms = timeout_ms ? now_ms() + timeout_ms : 0;
    close(out[1]); close(err[1]);
    j->out_fd = out[0]; j->err_fd = err[0];
    set_nonblock(j->out_fd); set_nonblock(j->err_fd);
    if (stdin_len > 0) {
        close(in[0]);
        j->in_fd = in[1];
        set_nonblock(j->in_fd);
        j->in_buf = stdin_data;
        j->in_len = (size_t)stdin_len;
        stdin_data = NULL;
    }
    {
        char body[8], *bp = body;
        put_u32(&bp, id);
        put_u32(&bp, (uint32_t)pid);
        send_frame(RSP_STARTED, body, 8, NULL, 0);
    }
    goto done;
fail:
    for (int k = 0; k < 2; k++) {
        if (out[k] >= 0) close(out[k]);
        if (err[k] >= 0) close(err[k]);
        if (in[k] >= 0) close(in[k]);
    }
    finish(j);
done:
    free(cwd);
    free(stdin_data);
    for (uint32_t i = 0; av && i < argc; i++) free(av[i]);
    for (uint32_t i = 0; ev && i < envc; i++) free(ev[i]);
    free(av);
    free(ev);
}

static void handle_frames(void) {
    size_t off = 0;
    while (in_len - off >= 5) {
        uint32_t len;
        memcpy(&len, inbuf + off, 4);
        if (len == 0 || len > MAX_FRAME) { fprintf(stderr, "corral-init: bad frame\n"); _exit(122); }
        if (in_len - off - 4 < len) break;
        char type = inbuf[off + 4];
        const char *body = inbuf + off + 5, *end = inbuf + off + 4 + len;
        if (type == REQ_EXEC) {
            start_job(body, end);
        } else if (type == REQ_KILL && end - body >= 8) {
            uint32_t id, sig;
            memcpy(&id, body, 4);
            memcpy(&sig, body + 4, 4);
            for (int i = 0; i < MAX_JOBS; i++)
                if (jobs[i].used && jobs[i].id == id && !jobs[i].exited) kill_tree(jobs[i].pid, (int)sig);
        }
        off += 4 + len;
    }
    memmove(inbuf, inbuf + off, in_len - off);
    in_len -= off;
}

static void reap(void) {
    for (;;) {
        int st;
        struct rusage ru;
        pid_t pid = wait4(-1, &st, WNOHANG, &ru);
        if (pid <= 0) return;
        for (int i = 0; i < MAX_JOBS; i++) {
            struct job *j = &jobs[i];
            if (j->used && !j->exited && j->pid == pid) {
                j->exited = 1;
                j->status = st;
                j->ru = ru;
                finish(j);
            }
        }
    }
}

static int serve(int fd) {
    report_fd = fd;
    if (report_fd >= 0) fcntl(report_fd, F_SETFD, FD_CLOEXEC);
    /* Not dumpable: the workload (same uid) can't read our memory or environ via /proc. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) die("signalfd");
    fcntl(0, F_SETFD, FD_CLOEXEC);
    fcntl(1, F_SETFD, FD_CLOEXEC);
    set_nonblock(0);
    umask(022);
    in_cap = 1 << 16;
    inbuf = malloc(in_cap);
    if (!inbuf) die("malloc");
    {
        char body[4], *p = body;
        put_u32(&p, PROTOCOL_VERSION);
        send_frame(RSP_READY, body, 4, NULL, 0);
    }
    struct pollfd pfds[2 + 3 * MAX_JOBS + MAX_DRAIN];
    struct { int job; int kind; } who[2 + 3 * MAX_JOBS + MAX_DRAIN];
    for (;;) {
        int n = 0;
        pfds[n] = (struct pollfd){.fd = 0, .events = POLLIN}; who[n++].job = -1;
        pfds[n] = (struct pollfd){.fd = sfd, .events = POLLIN}; who[n++].job = -2;
        uint64_t now = now_ms(), next = 0;
        for (int i = 0; i < MAX_JOBS; i++) {
            struct job *j = &jobs[i];
            if (!j->used) continue;
            if (j->deadline_ms && !j->timed_out) {
                if (now >= j->deadline_ms) {
                    j->timed_out = 1;
                    kill_tree(j->pid, SIGKILL);
                } else if (!next || j->deadline_ms < next) {
                    next = j->deadline_ms;
                }
            }
            if (j->out_fd >= 0) { pfds[n] = (struct pollfd){.fd = j->out_fd, .events = POLLIN}; who[n].job = i; who[n++].kind = 1; }
            if (j->err_fd >= 0) { pfds[n] = (struct pollfd){.fd = j->err_fd, .events = POLLIN}; who[n].job = i; who[n++].kind = 2; }
            if (j->in_fd >= 0) { pfds[n] = (struct pollfd){.fd = j->in_fd, .events = POLLOUT}; who[n].job = i; who[n++].kind = 0; }
        }
        for (int i = 0; i < n_drain; i++) {
            pfds[n] = (struct pollfd){.fd = drain_fds[i], .events = POLLIN};
            who[n].job = -3; who[n++].kind = i;
        }
        int timeout = next ? (int)(next - now) + 1 : -1;
        int r = poll(pfds, (nfds_t)n, timeout);
        if (r < 0 && errno != EINTR) die("poll");
        if (r <= 0) continue;
        int drained_any = 0;
        for (int k = 0; k < n; k++) {
            if (!pfds[k].revents) continue;
            if (who[k].job == -1) {
                if (in_len + 65536 > in_cap) {
                    in_cap *= 2;
                    inbuf = realloc(inbuf, in_cap);
                    if (!inbuf) die("realloc");
                }
                ssize_t got = read(0, inbuf + in_len, in_cap - in_len);
                if (got == 0) _exit(0); /* host closed the channel: end the sandbox */
                if (got > 0) { in_len += (size_t)got; handle_frames(); }
            } else if (who[k].job == -2) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) > 0) {}
                reap();
            } else if (who[k].job == -3) {
                char sink[65536];
                ssize_t got = read(drain_fds[who[k].kind], sink, sizeof sink);
                if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
                    close(drain_fds[who[k].kind]);
                    drain_fds[who[k].kind] = -1;
                    drained_any = 1;
                }
            } else {
                struct job *j = &jobs[who[k].job];
                if (!j->used) continue;
                if (who[k].kind == 0 && j->in_fd >= 0) {
                    ssize_t w = write(j->in_fd, j->in_buf + j->in_off, j->in_len - j->in_off);
                    if (w > 0) j->in_off += (size_t)w;
                    if ((w < 0 && errno != EAGAIN && errno != EINTR) || j->in_off >= j->in_len) {
                        close(j->in_fd);
                        j->in_fd = -1;
                        free(j->in_buf);
                        j->in_buf = NULL;
                    }
                } else if (who[k].kind == 1 && j->out_fd >= 0) {
                    pump(j, 1);
                } else if (who[k].kind == 2 && j->err_fd >= 0) {
                    pump(j, 2);
                }
            }
        }
        if (drained_any) {
            int m = 0;
            for (int i = 0; i < n_drain; i++) if (drain_fds[i] >= 0) drain_fds[m++] = drain_fds[i];
            n_drain = m;
        }
    }
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "launch")) return launch(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "serve")) return serve(argc >= 3 ? atoi(argv[2]) : -1);
    fprintf(stderr, "usage: corral-init launch ... -- PROGRAM | corral-init serve\n");
    return 120;
}
