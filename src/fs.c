/* moonshift.fs: the filesystem calls the tool needs that Lua's io/os lack (atomic writes,
 * exclusive creation, modes, trees, links), plus clocks and a few process facts. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "job.h"
#include "modules.h"
#include "support.h"

#define FILE_META "moonshift.fs.file"
#define DIR_META "moonshift.fs.dir"
#define FINGERPRINT_META "moonshift.fs.fingerprint"

struct file {
    int fd; /* -1 once closed */
};

/* Only a guard: the DIR of fs.list lives in a userdata so a memory error while names are
 * pushed closes it from __gc instead of leaking it. */
struct dir {
    DIR *d;
};

static mode_t check_mode(lua_State *L, int arg, lua_Integer def) {
    lua_Integer mode = luaL_optinteger(L, arg, def);
    luaL_argcheck(L, mode >= 0 && mode <= 07777, arg, "mode must be within 0..0o7777");
    return (mode_t)mode;
}

/* A scratch copy of s with room for extra bytes, owned by Lua (it is on the stack). */
static char *scratch(lua_State *L, const char *s, size_t extra) {
    size_t n = strlen(s);
    char *p = lua_newuserdatauv(L, n + extra + 1, 0);
    memcpy(p, s, n + 1);
    return p;
}

/* Writes all of s, retrying short writes and interrupted calls. */
static int write_all(int fd, const char *s, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, s, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        s += n;
        len -= (size_t)n;
    }
    return 0;
}

static struct file *new_file(lua_State *L) {
    struct file *f = lua_newuserdatauv(L, sizeof *f, 1);
    f->fd = -1;
    luaL_setmetatable(L, FILE_META);
    return f;
}

/* fs.list(dir) -> names sorted bytewise, without . and .. */
static int cmp_names(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int fs_list(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    struct dir *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->d = NULL;
    luaL_setmetatable(L, DIR_META);
    if ((g->d = opendir(path)) == NULL)
        return support_error(L, errno, path);
    lua_newtable(L); // [guard, names]
    lua_Integer n = 0;
    struct dirent *e;
    for (errno = 0; (e = readdir(g->d)) != NULL; errno = 0) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        lua_pushstring(L, e->d_name);
        lua_rawseti(L, -2, ++n);
    }
    int err = errno;
    closedir(g->d);
    g->d = NULL;
    if (err)
        return support_error(L, err, path);
    /* table.sort compares with strcoll; sort the (table-anchored) strings with strcmp. */
    const char **v = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *v, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -2, i);
        v[i - 1] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    qsort(v, (size_t)n, sizeof *v, cmp_names);
    lua_createtable(L, (int)n, 0); // [guard, names, v, sorted]
    for (lua_Integer i = 1; i <= n; i++) {
        lua_pushstring(L, v[i - 1]);
        lua_rawseti(L, -2, i);
    }
    return 1;
}

static int dir_gc(lua_State *L) {
    struct dir *g = luaL_checkudata(L, 1, DIR_META);
    if (g->d)
        closedir(g->d);
    g->d = NULL;
    return 0;
}

/* fs.stat(path [, follow]) -> { type, size, mode, mtime, mtime_nsec, ctime, ctime_nsec, uid,
 * gid, ino, dev } */
static int fs_stat(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int follow = lua_isnoneornil(L, 2) || lua_toboolean(L, 2);
    struct stat st;
    if ((follow ? stat(path, &st) : lstat(path, &st)) != 0)
        return support_error(L, errno, path);
    const char *type = S_ISREG(st.st_mode)   ? "file"
                       : S_ISDIR(st.st_mode) ? "directory"
                       : S_ISLNK(st.st_mode) ? "link"
                                             : "other";
    lua_createtable(L, 0, 11);
    lua_pushstring(L, type);
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, (lua_Integer)st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    lua_setfield(L, -2, "mode");
    lua_pushinteger(L, (lua_Integer)st.st_mtim.tv_sec);
    lua_setfield(L, -2, "mtime");
    lua_pushinteger(L, (lua_Integer)st.st_mtim.tv_nsec);
    lua_setfield(L, -2, "mtime_nsec");
    lua_pushinteger(L, (lua_Integer)st.st_ctim.tv_sec);
    lua_setfield(L, -2, "ctime");
    lua_pushinteger(L, (lua_Integer)st.st_ctim.tv_nsec);
    lua_setfield(L, -2, "ctime_nsec");
    lua_pushinteger(L, (lua_Integer)st.st_uid);
    lua_setfield(L, -2, "uid");
    lua_pushinteger(L, (lua_Integer)st.st_gid);
    lua_setfield(L, -2, "gid");
    lua_pushinteger(L, (lua_Integer)st.st_ino);
    lua_setfield(L, -2, "ino");
    lua_pushinteger(L, (lua_Integer)st.st_dev);
    lua_setfield(L, -2, "dev");
    return 1;
}

/* ---- fingerprints ---- */

struct fingerprint {
    EVP_MD_CTX *md;
    double newest; /* latest mtime or ctime seen, in seconds */
};

static void fp_add(struct fingerprint *fp, const char *s, size_t n) {
    EVP_DigestUpdate(fp->md, s, n);
}

static void fp_stat(struct fingerprint *fp, const struct stat *st) {
    uint64_t key[8] = {st->st_mode,
                       (uint64_t)st->st_size,
                       (uint64_t)st->st_mtim.tv_sec,
                       (uint64_t)st->st_mtim.tv_nsec,
                       (uint64_t)st->st_ctim.tv_sec,
                       (uint64_t)st->st_ctim.tv_nsec,
                       st->st_ino,
                       st->st_dev};
    fp_add(fp, "\t", 1);
    fp_add(fp, (const char *)key, sizeof key); /* binary: snprintf cost more than the hash */
    double m = (double)st->st_mtim.tv_sec + (double)st->st_mtim.tv_nsec / 1e9;
    double c = (double)st->st_ctim.tv_sec + (double)st->st_ctim.tv_nsec / 1e9;
    if (m > fp->newest)
        fp->newest = m;
    if (c > fp->newest)
        fp->newest = c;
}

static void fp_errno(struct fingerprint *fp, int err) {
    char buf[32];
    fp_add(fp, buf, (size_t)snprintf(buf, sizeof buf, "\t!%d", err));
}

/* Adds the sorted entries of the directory open at dfd (which it closes), `depth` levels of
 * subdirectories down; 0 or an errno. No Lua calls here: nothing can longjmp past free. */
static int fp_dir(struct fingerprint *fp, int dfd, int depth) {
    DIR *d = fdopendir(dfd);
    if (d == NULL) {
        int err = errno;
        close(dfd);
        return err;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int err = 0;
    struct dirent *e;
    for (errno = 0; (e = readdir(d)) != NULL; errno = 0) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (n == cap) {
            size_t ncap = cap ? 2 * cap : 256;
            char **grown = realloc(names, ncap * sizeof *names);
            if (grown == NULL) {
                err = ENOMEM;
                break;
            }
            names = grown, cap = ncap;
        }
        if ((names[n] = strdup(e->d_name)) == NULL) {
            err = ENOMEM;
            break;
        }
        n++;
    }
    if (!err && errno)
        err = errno;
    if (!err && n > 0)
        qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 0; i < n && !err; i++) {
        fp_add(fp, "\n", 1);
        fp_add(fp, names[i], strlen(names[i]));
        struct stat st;
        if (fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW) != 0) {
            fp_errno(fp, errno);
            continue;
        }
        fp_stat(fp, &st);
        if (S_ISLNK(st.st_mode)) { /* what the link points at can change on its own */
            if (fstatat(dirfd(d), names[i], &st, 0) != 0) {
                fp_errno(fp, errno);
                continue;
            }
            fp_stat(fp, &st);
        }
        if (S_ISDIR(st.st_mode) && depth > 0) {
            int sub = openat(dirfd(d), names[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (sub < 0) {
                fp_errno(fp, errno);
                continue;
            }
            fp_add(fp, "\t{", 2);
            err = fp_dir(fp, sub, depth - 1);
            fp_add(fp, "\t}", 2);
        }
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    closedir(d);
    return err;
}

/* fs.fingerprint(dir) -> hex, newest | nil, err, code
 * One SHA-256 of what listing a directory tells about its files: every name, sorted
 * bytewise, with the mode, size, mtime, ctime, inode and device of the entry and, for a
 * symlink, of its target; the entries of subdirectories too, one level down. Equal
 * fingerprints mean no file was added, removed, renamed or written in between, except
 * within one timestamp tick of `newest`, the latest mtime or ctime seen (seconds). */
/* A fingerprint being taken: by fs.fingerprint, or as a job by fs.fingerprint_begin. */
struct fp_job {
    char *path;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len;
    double newest;
    int err;
    struct job *job; /* NULL once waited for */
};

static void fp_run(void *arg) {
    struct fp_job *fj = arg;
    struct fingerprint fp = {EVP_MD_CTX_new(), 0};
    int dfd = open(fj->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        fj->err = errno;
    } else if (fp.md == NULL || !EVP_DigestInit_ex(fp.md, EVP_sha256(), NULL)) {
        fj->err = ENOMEM;
        close(dfd);
    } else if ((fj->err = fp_dir(&fp, dfd, 1)) == 0 && /* fp_dir closes dfd */
               !EVP_DigestFinal_ex(fp.md, fj->md, &fj->len)) {
        fj->err = EIO;
    }
    EVP_MD_CTX_free(fp.md);
    fj->newest = fp.newest;
}

/* [..] -> [.., hex, newest] | [.., nil, err, code] */
static int fp_push(lua_State *L, struct fp_job *fj) {
    if (fj->err)
        return support_error(L, fj->err, fj->path);
    push_hex(L, fj->md, fj->len);
    lua_pushnumber(L, (lua_Number)fj->newest);
    return 2;
}

static int fs_fingerprint(lua_State *L) {
    struct fp_job fj;
    memset(&fj, 0, sizeof fj);
    fj.path = (char *)luaL_checkstring(L, 1);
    fp_run(&fj);
    return fp_push(L, &fj);
}

/* Waits for the job (a fingerprint is bounded local work) and frees it; its box then
 * holds nothing. */
static void fp_job_free(struct fp_job **box) {
    struct fp_job *fj = *box;
    *box = NULL;
    if (fj->job)
        job_wait(fj->job);
    free(fj->path);
    free(fj);
}

static int fp_job_gc(lua_State *L) {
    struct fp_job **box = luaL_checkudata(L, 1, FINGERPRINT_META);
    if (*box)
        fp_job_free(box);
    return 0;
}

/* job:wait() -> what fs.fingerprint returns */
static int fp_job_wait(lua_State *L) {
    struct fp_job **box = luaL_checkudata(L, 1, FINGERPRINT_META);
    luaL_argcheck(L, *box != NULL, 1, "fingerprint already collected");
    struct fp_job *fj = *box;
    job_wait(fj->job);
    fj->job = NULL;
    int n = fp_push(L, fj);
    fp_job_free(box);
    return n;
}

/* fs.fingerprint_begin(dir) -> job
 * (Saves 12 % of status at 10,000 migrations, nothing at 1,000: bench/results/devices-*.md,
 * against MOONSHIFT_SERIAL=fingerprint.)
 * Takes fs.fingerprint(dir) as a background job (job.h) while the caller works;
 * job:wait() returns it. */
static int fs_fingerprint_begin(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    struct fp_job **box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, FINGERPRINT_META);
    struct fp_job *fj = calloc(1, sizeof *fj);
    if (fj == NULL || (fj->path = strdup(path)) == NULL) {
        free(fj);
        return luaL_error(L, "not enough memory");
    }
    if ((fj->job = job_start("fingerprint", fp_run, fj)) == NULL) {
        free(fj->path);
        free(fj);
        return luaL_error(L, "not enough memory");
    }
    *box = fj;
    return 1;
}

/* fs.fsync(path) -> true | nil, msg, code
 * Flushes a file, or a directory (its entries: a rename into it), to stable storage. */
static int fs_fsync(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        if (err == EACCES) /* a file we may only write can still be flushed */
            fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            return support_error(L, err, path);
    }
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    if (rc != 0)
        return support_errorf(L, err, "%s: fsync", path);
    lua_pushboolean(L, 1);
    return 1;
}

/* fs.read(path) -> whole file as a string */
static int fs_read(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    struct file *f = new_file(L); /* closes the fd if the buffer below runs out of memory */
    if ((f->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return support_error(L, errno, path);
    /* Reads in chunks of the file's size (at least 64 KiB): LUAL_BUFFERSIZE is 1 KiB, a
     * read(2) per KiB. The size is a hint only; the file may grow or shrink meanwhile. */
    struct stat st;
    size_t chunk = 64 * 1024;
    if (fstat(f->fd, &st) == 0 && st.st_size >= 0 && (size_t)st.st_size + 1 > chunk)
        chunk = (size_t)st.st_size + 1;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (;;) {
        char *p = luaL_prepbuffsize(&b, chunk);
        ssize_t n = read(f->fd, p, chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = errno;
            close(f->fd);
            f->fd = -1;
            return support_error(L, err, path);
        }
        if (n == 0)
            break;
        luaL_addsize(&b, (size_t)n);
    }
    close(f->fd);
    f->fd = -1;
    luaL_pushresult(&b);
    return 1;
}

/* fs.write_atomic(path, data [, mode]): temp file beside path, fsync, rename, fsync dir.
 * Readers see the old content or the new, never a torn file. */
static int fs_write_atomic(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    mode_t mode = check_mode(L, 3, 0644);
    /* All Lua allocation happens before the temp file exists: nothing below may raise. */
    char *tmp = scratch(L, path, 12);
    strcat(tmp, ".tmp.XXXXXX");
    char *dir = scratch(L, path, 1);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        strcpy(dir, ".");
    else
        slash[slash == dir ? 1 : 0] = '\0';

    int err = 0, created = 0, renamed = 0;
    /* mkostemp opens with O_CREAT|O_EXCL: it never follows or reuses an existing name. */
    int fd = mkostemp(tmp, O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        err = errno;
        goto done;
    }
    created = 1;
    if (fchmod(fd, mode) != 0 || write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        err = errno;
        goto done;
    }
    int rc = close(fd);
    fd = -1;
    if (rc != 0 || rename(tmp, path) != 0) {
        err = errno;
        goto done;
    }
    renamed = 1;
    /* Make the rename itself durable. Some filesystems cannot fsync a directory (EINVAL). */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || (fsync(dfd) != 0 && errno != EINVAL))
        err = errno;
    if (dfd >= 0)
        close(dfd);

done:
    if (fd >= 0)
        close(fd);
    if (err && created && !renamed)
        unlink(tmp);
    if (!err) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (renamed) {
        lua_pushfstring(L, "%s: written, but syncing directory %s failed", path, dir);
        return support_error(L, err, lua_tostring(L, -1));
    }
    return support_error(L, err, path);
}

/* fs.open_excl(path [, mode]) -> file: a new file that cannot be a planted name or link. */
static int fs_open_excl(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    mode_t mode = check_mode(L, 2, 0600);
    struct file *f = new_file(L);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1); /* the path, for error messages */
    f->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (f->fd < 0)
        return support_error(L, errno, path);
    if (fchmod(f->fd, mode) != 0) { /* umask narrowed the open() mode; set it exactly */
        int err = errno;
        close(f->fd);
        f->fd = -1;
        unlink(path);
        return support_error(L, err, path);
    }
    return 1;
}

static struct file *check_open(lua_State *L) {
    struct file *f = luaL_checkudata(L, 1, FILE_META);
    if (f->fd < 0)
        luaL_error(L, "attempt to use a closed file");
    return f;
}

static int file_error(lua_State *L, int err, const char *op) {
    lua_getiuservalue(L, 1, 1);
    lua_pushfstring(L, "%s: %s", lua_tostring(L, -1), op);
    return support_error(L, err, lua_tostring(L, -1));
}

static int file_write(lua_State *L) {
    struct file *f = check_open(L);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if (write_all(f->fd, s, len) != 0)
        return file_error(L, errno, "write");
    lua_pushboolean(L, 1);
    return 1;
}

static int file_fsync(lua_State *L) {
    struct file *f = check_open(L);
    if (fsync(f->fd) != 0)
        return file_error(L, errno, "fsync");
    lua_pushboolean(L, 1);
    return 1;
}

/* close(), __close and __gc: idempotent; only an explicit close reports an error. */
static int file_close(lua_State *L) {
    struct file *f = luaL_checkudata(L, 1, FILE_META);
    if (f->fd < 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    int rc = close(f->fd);
    f->fd = -1;
    if (rc != 0 && errno != EINTR) /* after EINTR the fd is closed on Linux */
        return file_error(L, errno, "close");
    lua_pushboolean(L, 1);
    return 1;
}

static int file_tostring(lua_State *L) {
    struct file *f = luaL_checkudata(L, 1, FILE_META);
    lua_getiuservalue(L, 1, 1);
    lua_pushfstring(L, "moonshift.fs.file (%s%s)", f->fd < 0 ? "closed " : "",
                    lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
    return 1;
}

/* fs.mkdir_p(path [, mode]): creates what is missing with exactly mode; directories that
 * already exist keep their permissions. */
static int fs_mkdir_p(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    mode_t mode = check_mode(L, 2, 0755);
    char *p = scratch(L, path, 0);
    size_t n = strlen(p);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        if (p[i - 1] == '/') /* repeated or trailing slash */
            continue;
        char saved = p[i];
        p[i] = '\0';
        if (mkdir(p, mode) == 0) {
            if (chmod(p, mode) != 0) /* mkdir's mode was narrowed by the umask */
                return support_error(L, errno, p);
        } else {
            /* Not only EEXIST: a read-only or unreadable parent can report EROFS/EACCES
             * for a directory that is there. */
            int err = errno;
            struct stat st;
            if (stat(p, &st) != 0)
                return support_error(L, err, p);
            if (!S_ISDIR(st.st_mode))
                return support_error(L, ENOTDIR, p);
        }
        p[i] = saved;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* fs.mkdtemp(prefix) -> a new 0700 directory prefix..XXXXXX */
static int fs_mkdtemp(lua_State *L) {
    char *tmpl = scratch(L, luaL_checkstring(L, 1), 6);
    strcat(tmpl, "XXXXXX");
    if (mkdtemp(tmpl) == NULL)
        return support_error(L, errno, tmpl);
    lua_pushstring(L, tmpl);
    return 1;
}

static int fs_remove(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int rc = unlink(path);
    if (rc != 0 && errno == EISDIR)
        rc = rmdir(path);
    return support_result(L, rc == 0, path);
}

/* Removes everything inside the open directory dfd, never following a symlink: entries
 * are examined with lstat semantics and subdirectories opened O_NOFOLLOW relative to
 * their parent, so a link (or a directory swapped for one meanwhile) is only unlinked.
 * On failure, rel holds the failing path relative to the root. Takes ownership of dfd. */
static int remove_contents(int dfd, char *rel, size_t cap) {
    DIR *d = fdopendir(dfd);
    if (d == NULL) {
        int err = errno;
        close(dfd);
        return err;
    }
    size_t base = strlen(rel);
    int err = 0;
    struct dirent *e;
    for (errno = 0; err == 0 && (e = readdir(d)) != NULL; errno = 0) {
        const char *name = e->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
            continue;
        snprintf(rel + base, cap - base, "/%s", name);
        struct stat st;
        if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            err = errno == ENOENT ? 0 : errno;
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0) {
                err = errno;
                continue;
            }
            if ((err = remove_contents(sub, rel, cap)) != 0)
                continue;
            snprintf(rel + base, cap - base, "/%s", name);
            if (unlinkat(dfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT)
                err = errno;
        } else if (unlinkat(dfd, name, 0) != 0 && errno != ENOENT) {
            err = errno;
        }
    }
    if (err == 0 && errno != 0)
        err = errno;
    closedir(d);
    if (err == 0)
        rel[base] = '\0';
    return err;
}

/* fs.remove_tree(path): rm -rf; a missing path is success, a symlink is removed itself. */
static int fs_remove_tree(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    size_t cap = 4096;
    char *rel = lua_newuserdatauv(L, cap, 0);
    rel[0] = '\0';
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) {
            lua_pushboolean(L, 1);
            return 1;
        }
        return support_error(L, errno, path);
    }
    int err = 0;
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) != 0)
            err = errno;
    } else {
        int dfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0)
            err = errno;
        else if ((err = remove_contents(dfd, rel, cap)) == 0 && rmdir(path) != 0)
            err = errno;
    }
    if (err == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushfstring(L, "%s%s", path, rel);
    return support_error(L, err, lua_tostring(L, -1));
}

static int fs_rename(lua_State *L) {
    const char *from = luaL_checkstring(L, 1);
    const char *to = luaL_checkstring(L, 2);
    if (rename(from, to) != 0) {
        int err = errno;
        lua_pushfstring(L, "%s -> %s", from, to);
        return support_error(L, err, lua_tostring(L, -1));
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int fs_chmod(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    luaL_checkinteger(L, 2);
    mode_t mode = check_mode(L, 2, 0);
    return support_result(L, chmod(path, mode) == 0, path);
}

/* fs.chown(path, uid, gid): nil (or -1) leaves that id unchanged; links are followed. */
static int fs_chown(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    lua_Integer uid = luaL_optinteger(L, 2, -1);
    lua_Integer gid = luaL_optinteger(L, 3, -1);
    return support_result(L, chown(path, (uid_t)uid, (gid_t)gid) == 0, path);
}

static int fs_symlink(lua_State *L) {
    const char *target = luaL_checkstring(L, 1);
    const char *path = luaL_checkstring(L, 2);
    return support_result(L, symlink(target, path) == 0, path);
}

static int fs_readlink(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    for (size_t cap = 256;; cap *= 2) {
        char *buf = lua_newuserdatauv(L, cap, 0);
        ssize_t n = readlink(path, buf, cap);
        if (n < 0)
            return support_error(L, errno, path);
        if ((size_t)n < cap) {
            lua_pushlstring(L, buf, (size_t)n);
            return 1;
        }
        lua_pop(L, 1); /* truncated: retry with more room */
    }
}

static int fs_realpath(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    char *buf = lua_newuserdatauv(L, PATH_MAX, 0);
    if (realpath(path, buf) == NULL)
        return support_error(L, errno, path);
    lua_pushstring(L, buf);
    return 1;
}

static int fs_isatty(lua_State *L) {
    static const char *const names[] = {"stdin", "stdout", "stderr", NULL};
    int fd = lua_isinteger(L, 1) ? (int)lua_tointeger(L, 1) : luaL_checkoption(L, 1, NULL, names);
    lua_pushboolean(L, isatty(fd));
    return 1;
}

static int fs_clock_ms(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec * 1e3 + (lua_Number)ts.tv_nsec / 1e6);
    return 1;
}

static int fs_now(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

static int fs_hostname(lua_State *L) {
    char name[HOST_NAME_MAX + 1];
    if (gethostname(name, sizeof name) != 0)
        return support_error(L, errno, "gethostname");
    name[HOST_NAME_MAX] = '\0';
    lua_pushstring(L, name);
    return 1;
}

/* fs.umask([mask]) -> previous mask; without a mask, reads it (set and restore). */
static int fs_umask(lua_State *L) {
    mode_t old;
    if (lua_isnoneornil(L, 1)) {
        old = umask(022);
        umask(old);
    } else {
        lua_Integer mask = luaL_checkinteger(L, 1);
        luaL_argcheck(L, mask >= 0 && mask <= 0777, 1, "mask must be within 0..0o777");
        old = umask((mode_t)mask);
    }
    lua_pushinteger(L, (lua_Integer)old);
    return 1;
}

/* fs.exists(path) -> bool, following symlinks (a dangling link does not exist). */
static int fs_exists(lua_State *L) {
    struct stat st;
    lua_pushboolean(L, stat(luaL_checkstring(L, 1), &st) == 0);
    return 1;
}

static void create_meta(lua_State *L) {
    static const luaL_Reg file_methods[] = {
        {"write", file_write},
        {"fsync", file_fsync},
        {"close", file_close},
        {NULL, NULL},
    };
    static const luaL_Reg file_metamethods[] = {
        {"__gc", file_close},
        {"__close", file_close},
        {"__tostring", file_tostring},
        {NULL, NULL},
    };
    static const luaL_Reg dir_metamethods[] = {{"__gc", dir_gc}, {NULL, NULL}};
    static const luaL_Reg fp_methods[] = {{"wait", fp_job_wait}, {NULL, NULL}};
    static const luaL_Reg fp_metamethods[] = {{"__gc", fp_job_gc}, {NULL, NULL}};
    support_new_meta(L, FILE_META, file_methods, file_metamethods);
    support_new_meta(L, DIR_META, NULL, dir_metamethods);
    support_new_meta(L, FINGERPRINT_META, fp_methods, fp_metamethods);
}

int luaopen_moonshift_fs(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"list", fs_list},
        {"stat", fs_stat},
        {"fingerprint", fs_fingerprint},
        {"fingerprint_begin", fs_fingerprint_begin},
        {"fsync", fs_fsync},
        {"read", fs_read},
        {"write_atomic", fs_write_atomic},
        {"open_excl", fs_open_excl},
        {"mkdir_p", fs_mkdir_p},
        {"mkdtemp", fs_mkdtemp},
        {"remove", fs_remove},
        {"remove_tree", fs_remove_tree},
        {"rename", fs_rename},
        {"chmod", fs_chmod},
        {"chown", fs_chown},
        {"symlink", fs_symlink},
        {"readlink", fs_readlink},
        {"realpath", fs_realpath},
        {"isatty", fs_isatty},
        {"clock_ms", fs_clock_ms},
        {"now", fs_now},
        {"hostname", fs_hostname},
        {"umask", fs_umask},
        {"exists", fs_exists},
        {NULL, NULL},
    };
    create_meta(L);
    luaL_newlib(L, funcs);
    return 1;
}
