/* Unit tests for job.c: threaded and inline (MOONSHIFT_SERIAL=1) runs, wait, abandon, and
 * job_exit skipping the exit handlers while an abandoned job still runs. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "job.h"

static int failures;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                        \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* What a run saw, and a gate it may wait at until the test opens it. */
struct probe {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int gated, open;
    int ran, done;
    pthread_t thread, done_thread;
    int sigint_blocked;
};

static void probe_init(struct probe *p, int gated) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->gated = gated;
}

static void probe_destroy(struct probe *p) {
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
}

static void probe_run(void *arg) {
    struct probe *p = arg;
    sigset_t mask;
    pthread_sigmask(SIG_BLOCK, NULL, &mask);
    pthread_mutex_lock(&p->lock);
    p->thread = pthread_self();
    p->sigint_blocked = sigismember(&mask, SIGINT);
    while (p->gated && !p->open)
        pthread_cond_wait(&p->cond, &p->lock);
    p->ran = 1;
    pthread_mutex_unlock(&p->lock);
}

static void probe_done(void *arg) {
    struct probe *p = arg;
    pthread_mutex_lock(&p->lock);
    p->done = 1;
    p->done_thread = pthread_self();
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

static void probe_open(struct probe *p) {
    pthread_mutex_lock(&p->lock);
    p->open = 1;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

static void probe_wait_done(struct probe *p) {
    pthread_mutex_lock(&p->lock);
    while (!p->done)
        pthread_cond_wait(&p->cond, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

/* Until the abandoned jobs have ended and been joined (a few ms at most). */
static int settle(void) {
    for (int i = 0; i < 5000 && job_pending(); i++)
        usleep(1000);
    return !job_pending();
}

static int exit_pipe = -1;
static void on_exit_handler(void) {
    ssize_t ignored = write(exit_pipe, "x", 1);
    (void)ignored;
}

/* In a child: a job abandoned while it runs makes job_exit end the process at once, with the
 * code and without exit handlers. */
static void test_exit_skips_handlers_while_running(void) {
    int fds[2];
    if (pipe(fds) != 0) {
        perror("pipe");
        failures++;
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        exit_pipe = fds[1];
        atexit(on_exit_handler);
        static struct probe p;
        probe_init(&p, 1); /* never opened */
        struct job *job = job_start("probe", probe_run, &p);
        job_abandon(job, probe_done);
        exit(job_exit(5)); /* exit() runs the handler if job_exit returns */
    }
    close(fds[1]);
    int status = 0;
    waitpid(pid, &status, 0);
    char c;
    ssize_t n = read(fds[0], &c, 1);
    close(fds[0]);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 5);
    CHECK(n == 0); /* the handler did not run */
}

static void test_wait(void) {
    struct probe p;
    probe_init(&p, 0);
    struct job *job = job_start("probe", probe_run, &p);
    CHECK(job != NULL);
    job_wait(job);
    CHECK(p.ran);
    CHECK(!pthread_equal(p.thread, pthread_self()));
    CHECK(p.sigint_blocked);
    probe_destroy(&p);
}

/* Abandoned while running: done runs on the job's thread after run; job_exit then collects
 * it and returns the code. */
static void test_abandon_running(void) {
    struct probe p;
    probe_init(&p, 1);
    struct job *job = job_start("probe", probe_run, &p);
    job_abandon(job, probe_done);
    CHECK(!p.done);
    probe_open(&p);
    probe_wait_done(&p);
    CHECK(p.ran);
    CHECK(pthread_equal(p.done_thread, p.thread));
    CHECK(settle());
    CHECK(job_exit(3) == 3); /* returns, since nothing runs (else it _exits, failing) */
    probe_destroy(&p);
}

/* Abandoned after run returned (most likely: the job is given 10 ms): done runs either way,
 * and nothing is left. */
static void test_abandon_ran(void) {
    struct probe p;
    probe_init(&p, 0);
    struct job *job = job_start("probe", probe_run, &p);
    for (;;) { /* until run has returned */
        pthread_mutex_lock(&p.lock);
        int ran = p.ran;
        pthread_mutex_unlock(&p.lock);
        if (ran)
            break;
        usleep(1000);
    }
    usleep(10000); /* and job_thread has marked it */
    job_abandon(job, probe_done);
    probe_wait_done(&p);
    CHECK(settle());
    CHECK(job_exit(0) == 0);
    probe_destroy(&p);
}

/* MOONSHIFT_SERIAL=1: run runs inside job_start, on this thread; abandon calls done now. */
static void test_serial(void) {
    setenv("MOONSHIFT_SERIAL", "1", 1);
    struct probe p;
    probe_init(&p, 0);
    struct job *job = job_start("probe", probe_run, &p);
    CHECK(p.ran);
    CHECK(pthread_equal(p.thread, pthread_self()));
    job_wait(job);
    probe_destroy(&p);

    probe_init(&p, 0);
    job = job_start("probe", probe_run, &p);
    CHECK(p.ran);
    job_abandon(job, probe_done);
    CHECK(p.done);
    CHECK(pthread_equal(p.done_thread, pthread_self()));
    CHECK(job_exit(0) == 0);
    probe_destroy(&p);

    /* A list of names: only those run inline. */
    setenv("MOONSHIFT_SERIAL", "connect,probe", 1);
    probe_init(&p, 0);
    job = job_start("probe", probe_run, &p);
    CHECK(p.ran && pthread_equal(p.thread, pthread_self()));
    job_wait(job);
    probe_destroy(&p);
    setenv("MOONSHIFT_SERIAL", "probes,connect", 1);
    probe_init(&p, 0);
    job = job_start("probe", probe_run, &p);
    job_wait(job);
    CHECK(p.ran && !pthread_equal(p.thread, pthread_self()));
    probe_destroy(&p);
    unsetenv("MOONSHIFT_SERIAL");
}

int main(void) {
    unsetenv("MOONSHIFT_SERIAL");
    test_exit_skips_handlers_while_running(); /* first: the child starts with no job */
    test_wait();
    test_abandon_running();
    test_abandon_ran();
    test_serial();
    if (failures) {
        fprintf(stderr, "%d failed\n", failures);
        return 1;
    }
    printf("job: all passed\n");
    return 0;
}
