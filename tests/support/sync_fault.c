/*
 * Fault injection for tests/durability.rs, loaded into `dsevents serve`
 * with LD_PRELOAD. It wraps fdatasync and fsync: when the file descriptor
 * is a SQLite WAL file (its path ends in "-wal") and SYNC_FAULT_DIR names
 * a directory, then
 *   - a file "fail" in that directory makes the call fail with EIO, and
 *   - a file "delay_ms" holding a number delays the call by that many ms.
 * Every other call goes straight to the C library.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int is_wal(int fd) {
    char link[64];
    char path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, path, sizeof path - 1);
    if (length < 4) {
        return 0;
    }
    path[length] = '\0';
    return strcmp(path + length - 4, "-wal") == 0;
}

/* Returns -1 with errno set when the call must fail, 0 to go on. */
static int inject(int fd) {
    const char *dir = getenv("SYNC_FAULT_DIR");
    if (dir == NULL || !is_wal(fd)) {
        return 0;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/fail", dir);
    if (access(path, F_OK) == 0) {
        errno = EIO;
        return -1;
    }
    snprintf(path, sizeof path, "%s/delay_ms", dir);
    FILE *file = fopen(path, "r");
    if (file != NULL) {
        long ms = 0;
        if (fscanf(file, "%ld", &ms) == 1 && ms > 0) {
            struct timespec pause = { ms / 1000, (ms % 1000) * 1000000L };
            nanosleep(&pause, NULL);
        }
        fclose(file);
    }
    return 0;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    if (inject(fd) < 0) {
        return -1;
    }
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    if (inject(fd) < 0) {
        return -1;
    }
    return real(fd);
}
