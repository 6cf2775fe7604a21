/* Runs a command with prctl(PR_GET_AUXV) failing (EINVAL), so that rustix falls back to reading
 * /proc/self/auxv, which valgrind emulates. Without it rustix reads the host's auxv through the
 * prctl (valgrind 3.19 passes it through), follows AT_SYSINFO_EHDR to a vDSO valgrind did not
 * map, and gatewayd dies with SIGSEGV under callgrind (rustix issue #1559).
 *   cc -O2 -o no-getauxv no-getauxv.c && ./no-getauxv valgrind ... */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PR_GET_AUXV_ 0x41555856

int main(int argc, char **argv) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_prctl, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_GET_AUXV_, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof(code) / sizeof(code[0]), .filter = code};
    if (argc < 2 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        perror("no-getauxv");
        return 1;
    }
    execvp(argv[1], argv + 1);
    perror("no-getauxv: exec");
    return 1;
}
