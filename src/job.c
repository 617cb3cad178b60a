/* Background jobs (see job.h): one lifecycle for every helper thread of the host. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "job.h"

struct job {
    void (*run)(void *arg);
    void *arg;
    void (*done)(void *arg); /* set by job_abandon while run is still running */
    pthread_t thread;
    int threaded;     /* a thread runs it: it is joined, always */
    int ran;          /* run has returned */
    int ended;        /* abandoned, and done has returned too: only the thread's exit is left */
    struct job *next; /* in `abandoned` */
};

/* Guards ran, done, ended, the list and the count. Abandoned jobs stay joinable and are joined once
 * ended (at the next start, or at exit): a thread that has left our code still runs its
 * thread-local destructors (OpenSSL's, Kerberos's) after it, and only the join says those
 * are over. */
static pthread_mutex_t jobs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct job *abandoned;
static int unjoined; /* threads started and not joined yet, abandoned or not */

static void *job_thread(void *p) {
    struct job *job = p;
    job->run(job->arg);
    pthread_mutex_lock(&jobs_lock);
    job->ran = 1;
    void (*done)(void *) = job->done;
    pthread_mutex_unlock(&jobs_lock);
    if (done) {
        done(job->arg);
        pthread_mutex_lock(&jobs_lock);
        job->ended = 1;
        pthread_mutex_unlock(&jobs_lock);
    }
    return NULL;
}

/* Joins and frees the abandoned jobs that have ended; whether any thread is left, a job
 * neither waited for nor abandoned included. Called with jobs_lock held (the threads it
 * joins no longer take it). */
static int collect_ended(void) {
    for (struct job **at = &abandoned; *at;) {
        struct job *job = *at;
        if (!job->ended) {
            at = &job->next;
            continue;
        }
        *at = job->next;
        pthread_join(job->thread, NULL);
        unjoined--;
        free(job);
    }
    return unjoined > 0;
}

/* MOONSHIFT_SERIAL=1 runs every job inline; a comma-separated list of names runs those
 * (for bisecting a race, and for weighing what each thread saves). */
static int serial(const char *name) {
    const char *s = getenv("MOONSHIFT_SERIAL");
    if (s == NULL || *s == '\0')
        return 0;
    if (strcmp(s, "1") == 0)
        return 1;
    size_t n = strlen(name);
    for (const char *p = s; (p = strstr(p, name)) != NULL; p += n)
        if ((p == s || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
            return 1;
    return 0;
}

struct job *job_start(const char *name, void (*run)(void *arg), void *arg) {
    struct job *job = calloc(1, sizeof *job);
    if (job == NULL)
        return NULL;
    job->run = run;
    job->arg = arg;
    pthread_mutex_lock(&jobs_lock);
    collect_ended();
    pthread_mutex_unlock(&jobs_lock);
    if (!serial(name)) {
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old); /* the new thread inherits this mask */
        job->threaded = pthread_create(&job->thread, NULL, job_thread, job) == 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (job->threaded) {
        pthread_mutex_lock(&jobs_lock);
        unjoined++;
        pthread_mutex_unlock(&jobs_lock);
    } else {
        run(arg);
        job->ran = 1;
    }
    return job;
}

static void join(struct job *job) {
    pthread_join(job->thread, NULL);
    pthread_mutex_lock(&jobs_lock);
    unjoined--;
    pthread_mutex_unlock(&jobs_lock);
}

void job_wait(struct job *job) {
    if (job->threaded)
        join(job);
    free(job);
}

void job_abandon(struct job *job, void (*done)(void *arg)) {
    if (job->threaded) {
        pthread_mutex_lock(&jobs_lock);
        int ran = job->ran;
        if (!ran) {
            job->done = done;
            job->next = abandoned;
            abandoned = job;
        }
        pthread_mutex_unlock(&jobs_lock);
        if (!ran)
            return;
        join(job);
    }
    done(job->arg);
    free(job);
}

int job_pending(void) {
    pthread_mutex_lock(&jobs_lock);
    int pending = collect_ended();
    pthread_mutex_unlock(&jobs_lock);
    return pending;
}

int job_exit(int code) {
    if (!job_pending())
        return code;
    /* A thread is still in a library whose exit handler would free its state under it (the
     * Kerberos one aborted in k5_mutex_lock): end without exit handlers. */
    fflush(NULL); /* stdout, stderr, and any file os.exit left open */
    _exit(code);
}
