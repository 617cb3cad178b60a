/* Background jobs: a function run on a thread that never handles a signal, with one
 * lifecycle: job_start, then exactly one of job_wait or job_abandon. The process ends
 * through job_exit, so that no job is inside a library (libpq, OpenSSL, GSSAPI) while
 * exit handlers tear that library down. */
#ifndef MOONSHIFT_JOB_H
#define MOONSHIFT_JOB_H

struct job;

/* Starts run(arg) on a thread of its own, which blocks every signal (the main thread keeps
 * handling them). With MOONSHIFT_SERIAL=1 in the environment (or a comma-separated list
 * holding this job's name), or when no thread can be made, run(arg) runs here and now
 * instead. NULL when out of memory: then nothing ran. */
struct job *job_start(const char *name, void (*run)(void *arg), void *arg);

/* Waits for run to return and frees the job. */
void job_wait(struct job *job);

/* Gives up on the job without waiting: run goes on to its end, then done(arg) runs (on the
 * job's thread, or here if run has already returned) and the job is freed. */
void job_abandon(struct job *job, void (*done)(void *arg));

/* Collects the abandoned jobs that have ended; whether a job's thread is still there
 * (running, or started and neither waited for nor abandoned). */
int job_pending(void);

/* For main's return: collects the abandoned jobs that have ended and returns code. If one
 * is still running, flushes every stdio stream and ends the process with _exit(code)
 * instead, without exit handlers. */
int job_exit(int code);

#endif
