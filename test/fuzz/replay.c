/* Replays fuzz inputs without libFuzzer, so the corpora run as ordinary tests.
 *
 * Linked with one fuzz target (a file defining LLVMFuzzerTestOneInput) and
 * built with -DFUZZ_NAME='"x"'. Usage:
 *
 *     replay_x [DIR_OR_FILE...]
 *
 * runs the target over every regular file in the directories given (not
 * recursively; files given by name too) and prints "fuzz_x: N passed, N
 * failed". With no arguments it replays test/fuzz/corpus/x (the committed
 * corpus: crafted seeds, minimized fuzzer findings and crash reproducers) and
 * $BM_FUZZ_SEEDS/x (default $BM_BUILD/fuzz-seeds/x: seeds made from the
 * fixtures by test/fuzz/make_corpus.sh); a missing directory is skipped.
 *
 * Each input runs in a forked child that gets a private copy of exactly the
 * input's bytes, so one bad input is reported by name and the others still
 * run; in a sanitizer build the child's exit runs LeakSanitizer, so a leak
 * fails that input. The empty input runs first in the parent: it counts as a
 * test and initialises whatever the target loads lazily (a tokenizer, a
 * model), which the children then share. BM_REPLAY_FORK=0 runs every input in
 * one process (for a debugger). */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef FUZZ_NAME
#error "build with -DFUZZ_NAME='\"name\"'"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int passed, failed, use_fork = 1;

static int run_one(const char *path, const uint8_t *data, size_t size) {
    /* Exactly `size` bytes, so a read past the end is caught by ASan. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return -1;
    if (size) memcpy(copy, data, size);
    if (!use_fork) {
        LLVMFuzzerTestOneInput(copy, size);
        free(copy);
        return 0;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "fuzz_%s: fork: %s\n", FUZZ_NAME, strerror(errno));
        free(copy);
        return -1;
    }
    if (pid == 0) {
        LLVMFuzzerTestOneInput(copy, size);
        free(copy);
        exit(0); /* not _exit: LeakSanitizer checks at exit */
    }
    free(copy);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    if (WIFSIGNALED(status))
        fprintf(stderr, "fuzz_%s: %s: killed by signal %d\n", FUZZ_NAME, path, WTERMSIG(status));
    else
        fprintf(stderr, "fuzz_%s: %s: exit status %d\n", FUZZ_NAME, path, WEXITSTATUS(status));
    return -1;
}

static void run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz_%s: cannot open %s\n", FUZZ_NAME, path);
        failed++;
        return;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        if (n == cap) {
            uint8_t *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int bad = !buf || ferror(f);
    fclose(f);
    if (bad) {
        fprintf(stderr, "fuzz_%s: cannot read %s\n", FUZZ_NAME, path);
        free(buf);
        failed++;
        return;
    }
    if (run_one(path, buf, n) == 0)
        passed++;
    else
        failed++;
    free(buf);
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file of `dir`, in name order (so runs are repeatable). */
static void run_dir(const char *dir, int must_exist) {
    DIR *d = opendir(dir);
    if (!d) {
        if (must_exist) {
            fprintf(stderr, "fuzz_%s: cannot open directory %s\n", FUZZ_NAME, dir);
            failed++;
        }
        return;
    }
    char **names = NULL;
    size_t count = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 256;
            char **more = realloc(names, cap * sizeof *names);
            if (!more) break;
            names = more;
        }
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        names[count] = malloc(len);
        if (!names[count]) break;
        snprintf(names[count], len, "%s/%s", dir, e->d_name);
        count++;
    }
    closedir(d);
    if (count) qsort(names, count, sizeof *names, compare_names);
    for (size_t i = 0; i < count; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) run_file(names[i]);
        free(names[i]);
    }
    free(names);
}

int main(int argc, char **argv) {
    const char *fork_env = getenv("BM_REPLAY_FORK");
    if (fork_env && !strcmp(fork_env, "0")) use_fork = 0;

    /* The empty input, in this process: a test, and lazy initialisation. */
    static const uint8_t empty[1];
    LLVMFuzzerTestOneInput(empty, 0);
    passed++;

    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            struct stat st;
            if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode))
                run_dir(argv[i], 1);
            else
                run_file(argv[i]);
        }
    } else {
        char dir[4096];
        snprintf(dir, sizeof dir, "test/fuzz/corpus/%s", FUZZ_NAME);
        run_dir(dir, 0);
        const char *seeds = getenv("BM_FUZZ_SEEDS"), *build = getenv("BM_BUILD");
        if (seeds && *seeds)
            snprintf(dir, sizeof dir, "%s/%s", seeds, FUZZ_NAME);
        else
            snprintf(dir, sizeof dir, "%s/fuzz-seeds/%s", build && *build ? build : "build", FUZZ_NAME);
        run_dir(dir, 0);
    }
    printf("fuzz_%s: %d passed, %d failed\n", FUZZ_NAME, passed, failed);
    return failed ? 1 : 0;
}
