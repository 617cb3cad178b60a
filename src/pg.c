/* moonshift.pg: PostgreSQL through libpq; results become plain Lua tables at once. */
#include <errno.h>
#include <lauxlib.h>
#include <libpq-fe.h>
#include <lua.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "modules.h"
#include "redact.h"
#include "support.h"

#define CONN_META "moonshift.pg.conn"
#define RESULT_META "moonshift.pg.result"
#define ERROR_META "moonshift.pg.error"
#define MEM_META "moonshift.pg.mem"
#define OPTIONS_META "moonshift.pg.options"
#define PENDING_META "moonshift.pg.pending"

/* Type OIDs from the server's pg_type.h, which libpq-dev does not ship; they never change. */
enum {
    BOOLOID = 16,
    INT8OID = 20,
    INT2OID = 21,
    INT4OID = 23,
    OIDOID = 26,
    JSONOID = 114,
    FLOAT4OID = 700,
    FLOAT8OID = 701,
    NUMERICOID = 1700,
    JSONBOID = 3802,
};

#define COPY_CHUNK (64 * 1024)
#define MAX_PARAMS 65535 /* the protocol counts parameters in 16 bits */
/* Notices are kept until conn:notices(); a migration that never asks must not grow
 * without bound, so beyond this many they are only counted. */
#define MAX_NOTICES 10000

/* pg.null is the address of this byte: unique, and unlike cjson.null (NULL) never 0. */
static char null_sentinel;

struct notice {
    struct notice *next;
    const char *severity, *sqlstate, *message, *detail, *hint;
    char text[]; /* the strings above, one allocation per notice */
};

struct conn {
    PGconn *pg;
    PGcancel *cancel;
    struct notice *notices, **notices_end;
    size_t notice_count, notices_dropped;
};

struct result_box {
    PGresult *res;
};

/* The cancel handle a SIGINT/SIGTERM uses: the connection running migrations. */
static PGcancel *volatile signal_cancel = NULL;

void pg_cancel_from_signal(void) {
    PGcancel *cancel = signal_cancel;
    char errbuf[256];
    if (cancel)
        PQcancel(cancel, errbuf, sizeof errbuf); /* async-signal-safe */
}

/* A C string Lua has not copied yet; malloc'd (redact_secrets) or from libpq (PQescape*). */
struct mem {
    char *p;
    int from_libpq;
};

/* PQconninfoParse's array, freed by __gc if building the Lua table raises. */
struct options_box {
    PQconninfoOption *opts;
};

/* ---- helpers: boxes ---- */

static void mem_release(struct mem *m) {
    if (m->p) {
        if (m->from_libpq)
            PQfreemem(m->p);
        else
            free(m->p);
        m->p = NULL;
    }
}

static int mem_gc(lua_State *L) {
    mem_release(luaL_checkudata(L, 1, MEM_META));
    return 0;
}

static struct mem *push_mem(lua_State *L, int from_libpq) {
    struct mem *m = lua_newuserdatauv(L, sizeof *m, 0);
    m->p = NULL;
    m->from_libpq = from_libpq;
    luaL_setmetatable(L, MEM_META);
    return m;
}

static void result_release(struct result_box *box) {
    PQclear(box->res);
    box->res = NULL;
}

static int result_gc(lua_State *L) {
    result_release(luaL_checkudata(L, 1, RESULT_META));
    return 0;
}

/* Pushed before a PGresult exists, so a Lua error during conversion cannot leak it. */
static struct result_box *push_result_box(lua_State *L) {
    struct result_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->res = NULL;
    luaL_setmetatable(L, RESULT_META);
    return box;
}

/* [..] -> [.., s]: a libpq message without passwords or the trailing newline. */
static void push_redacted(lua_State *L, const char *msg) {
    struct mem *m = push_mem(L, 0); // [box]
    size_t len;
    m->p = redact_secrets(msg, strlen(msg), &len);
    if (!m->p)
        luaL_error(L, "not enough memory");
    while (len > 0 && (m->p[len - 1] == '\n' || m->p[len - 1] == ' '))
        len--;
    lua_pushlstring(L, m->p, len); // [box, s]
    mem_release(m);
    lua_remove(L, -2);
}

/* ---- errors ---- */

static void set_string(lua_State *L, const char *key, const char *value) {
    if (value && *value) {
        lua_pushstring(L, value);
        lua_setfield(L, -2, key);
    }
}

static int is_error(const PGresult *res) {
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR || st == PGRES_BAD_RESPONSE;
}

static int is_copy(const PGresult *res) {
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH;
}

/* [..] -> [.., err] for a failed result, or for a libpq failure when res is NULL. */
static void push_error(lua_State *L, struct conn *c, const PGresult *res) {
    lua_createtable(L, 0, 8); // [err]
    if (res) {
        const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
        set_string(L, "severity", severity ? severity : PQresultErrorField(res, PG_DIAG_SEVERITY));
        set_string(L, "sqlstate", PQresultErrorField(res, PG_DIAG_SQLSTATE));
        set_string(L, "message", PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
        set_string(L, "detail", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
        set_string(L, "hint", PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
        set_string(L, "where", PQresultErrorField(res, PG_DIAG_CONTEXT));
        set_string(L, "schema", PQresultErrorField(res, PG_DIAG_SCHEMA_NAME));
        set_string(L, "table", PQresultErrorField(res, PG_DIAG_TABLE_NAME));
        set_string(L, "column", PQresultErrorField(res, PG_DIAG_COLUMN_NAME));
        set_string(L, "constraint", PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME));
        const char *position = PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION);
        if (position) {
            lua_pushinteger(L, strtol(position, NULL, 10));
            lua_setfield(L, -2, "position");
        }
    }
    if (lua_getfield(L, -1, "message") == LUA_TNIL) {
        /* No primary message: libpq made this error itself (lost connection, misuse,
         * out of memory). Its text can quote the conninfo, hence the redaction. */
        const char *msg = res ? PQresultErrorMessage(res) : "";
        if (!*msg)
            msg = PQerrorMessage(c->pg);
        push_redacted(L, *msg ? msg : "unknown libpq failure");
        lua_setfield(L, -3, "message");
    }
    lua_pop(L, 1);
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        lua_pushliteral(L, "connection_lost");
        lua_setfield(L, -2, "kind");
    }
    luaL_setmetatable(L, ERROR_META);
}

/* [..] -> [.., err] with only a message: failures we detect ourselves. */
static void push_message_error(lua_State *L, const char *msg) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, msg);
    lua_setfield(L, -2, "message");
    luaL_setmetatable(L, ERROR_META);
}

/* nil, err from the connection's last libpq error. */
static int fail_conn(lua_State *L, struct conn *c) {
    lua_pushnil(L);
    push_error(L, c, NULL);
    return 2;
}

/* "ERROR:  message (SQLSTATE 23505)", like psql's first line, plus the code. */
static int error_tostring(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "severity");
    lua_getfield(L, 1, "message");
    lua_getfield(L, 1, "sqlstate"); // [err, severity, message, sqlstate]
    const char *severity = lua_tostring(L, 2), *message = lua_tostring(L, 3);
    const char *sqlstate = lua_tostring(L, 4);
    int n = 0;
    if (severity) {
        lua_pushfstring(L, "%s:  ", severity);
        n++;
    }
    lua_pushstring(L, message ? message : "unknown error");
    n++;
    if (sqlstate) {
        lua_pushfstring(L, " (SQLSTATE %s)", sqlstate);
        n++;
    }
    lua_concat(L, n);
    return 1;
}

/* ---- notices ---- */

/* Called by libpq in the middle of its own calls: must not touch Lua (it may be in a
 * state where raising would unwind through libpq), so the notice is only copied. */
static void on_notice(void *arg, const PGresult *res) {
    struct conn *c = arg;
    const char *fields[5] = {
        PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED),
        PQresultErrorField(res, PG_DIAG_SQLSTATE),
        PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY),
        PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL),
        PQresultErrorField(res, PG_DIAG_MESSAGE_HINT),
    };
    if (!fields[0])
        fields[0] = PQresultErrorField(res, PG_DIAG_SEVERITY);
    if (!fields[2])
        fields[2] = PQresultErrorMessage(res);
    size_t total = 0;
    for (int i = 0; i < 5; i++)
        total += fields[i] ? strlen(fields[i]) + 1 : 0;
    struct notice *n = c->notice_count < MAX_NOTICES ? malloc(sizeof *n + total) : NULL;
    if (!n) {
        c->notices_dropped++;
        return;
    }
    const char **dest[5] = {&n->severity, &n->sqlstate, &n->message, &n->detail, &n->hint};
    char *p = n->text;
    for (int i = 0; i < 5; i++) {
        *dest[i] = NULL;
        if (fields[i]) {
            size_t len = strlen(fields[i]) + 1;
            memcpy(p, fields[i], len);
            *dest[i] = p;
            p += len;
        }
    }
    n->next = NULL;
    *c->notices_end = n;
    c->notices_end = &n->next;
    c->notice_count++;
}

static void free_notices(struct conn *c) {
    while (c->notices) {
        struct notice *next = c->notices->next;
        free(c->notices);
        c->notices = next;
    }
    c->notices_end = &c->notices;
    c->notice_count = 0;
    c->notices_dropped = 0;
}

/* ---- parameters and values ---- */

/* Shortest of %.15g..%.17g that reads back as the same double: exact, yet 0.1 stays 0.1. */
static void push_float_text(lua_State *L, lua_Number x) {
    if (isnan(x)) {
        lua_pushliteral(L, "NaN");
        return;
    }
    if (isinf(x)) {
        lua_pushstring(L, x > 0 ? "Infinity" : "-Infinity");
        return;
    }
    char buf[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)x);
        if (strtod(buf, NULL) == (double)x)
            break;
    }
    lua_pushstring(L, buf);
}

/* The Lua values at [first, top] as text parameters; numbers are replaced in place by
 * their text so every pointer stays valid while the stack holds it. Pushes the array. */
static const char **check_params(lua_State *L, int first, int *count) {
    int n = lua_gettop(L) - first + 1;
    if (n < 0)
        n = 0;
    if (n > MAX_PARAMS)
        luaL_error(L, "too many parameters (%d, at most %d)", n, MAX_PARAMS);
    for (int i = 0; i < n; i++) {
        int idx = first + i;
        switch (lua_type(L, idx)) {
        case LUA_TNUMBER:
            if (lua_isinteger(L, idx))
                lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
            else
                push_float_text(L, lua_tonumber(L, idx));
            lua_replace(L, idx);
            break;
        case LUA_TSTRING: {
            size_t len;
            const char *s = lua_tolstring(L, idx, &len);
            if (strlen(s) != len)
                luaL_argerror(L, idx, "string contains a zero byte");
            break;
        }
        case LUA_TNIL:
        case LUA_TBOOLEAN:
            break;
        case LUA_TLIGHTUSERDATA:
            if (lua_touserdata(L, idx) == &null_sentinel)
                break;
            /* fall through */
        default:
            luaL_argerror(
                L, idx,
                lua_pushfstring(L, "cannot send a %s as a parameter", luaL_typename(L, idx)));
        }
    }
    const char **values = lua_newuserdatauv(L, (n ? (size_t)n : 1) * sizeof *values, 0);
    for (int i = 0; i < n; i++) {
        int idx = first + i;
        switch (lua_type(L, idx)) {
        case LUA_TSTRING:
            values[i] = lua_tostring(L, idx);
            break;
        case LUA_TBOOLEAN:
            values[i] = lua_toboolean(L, idx) ? "true" : "false";
            break;
        default: /* nil and pg.null */
            values[i] = NULL;
        }
    }
    *count = n;
    return values;
}

enum conversion { AS_TEXT, AS_INTEGER, AS_FLOAT, AS_BOOLEAN, AS_JSON };

static enum conversion conversion_for(Oid type) {
    switch (type) {
    case INT2OID:
    case INT4OID:
    case INT8OID:
    case OIDOID:
        return AS_INTEGER;
    case FLOAT4OID:
    case FLOAT8OID:
        return AS_FLOAT;
    case BOOLOID:
        return AS_BOOLEAN;
    case JSONOID:
    case JSONBOID:
        return AS_JSON;
    default: /* numeric too: a double would lose digits */
        return AS_TEXT;
    }
}

/* [.., decode?] -> [.., decode?, value]; decode is cjson.decode's index when needed. */
static void push_value(lua_State *L, const PGresult *res, int row, int col, int decode) {
    if (PQgetisnull(res, row, col)) {
        lua_pushlightuserdata(L, &null_sentinel);
        return;
    }
    const char *v = PQgetvalue(res, row, col);
    size_t len = (size_t)PQgetlength(res, row, col);
    switch (conversion_for(PQftype(res, col))) {
    case AS_INTEGER: {
        char *end;
        errno = 0;
        long long n = strtoll(v, &end, 10);
        if (errno || end == v || *end)
            lua_pushlstring(L, v, len); /* cannot happen for these types; keep the text */
        else
            lua_pushinteger(L, (lua_Integer)n);
        break;
    }
    case AS_FLOAT: /* strtod reads the server's NaN, Infinity and -Infinity */
        lua_pushnumber(L, (lua_Number)strtod(v, NULL));
        break;
    case AS_BOOLEAN:
        lua_pushboolean(L, v[0] == 't');
        break;
    case AS_JSON:
        lua_pushvalue(L, decode);
        lua_pushlstring(L, v, len);
        lua_call(L, 1, 1);
        break;
    default:
        lua_pushlstring(L, v, len);
    }
}

/* [..] -> [.., cjson.decode]. The host preloads cjson; use the loaded copy if there is one. */
static void push_json_decode(lua_State *L) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, "cjson") != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_getglobal(L, "require");
        lua_pushliteral(L, "cjson");
        lua_call(L, 1, 1);
    }
    lua_getfield(L, -1, "decode"); // [loaded, cjson, decode]
    lua_replace(L, -3);
    lua_pop(L, 1);
}

/* [..] -> [.., rows]. res stays owned by its box, so an error here cannot leak it. */
static void push_rows(lua_State *L, const PGresult *res) {
    int nfields = PQnfields(res), ntuples = PQntuples(res);
    luaL_checkstack(L, 8, NULL);
    int decode = 0;
    for (int j = 0; j < nfields && !decode; j++) {
        if (conversion_for(PQftype(res, j)) == AS_JSON) {
            push_json_decode(L);
            decode = lua_gettop(L);
        }
    }
    lua_createtable(L, ntuples, 3); // [decode?, rows]
    int rows = lua_gettop(L);
    lua_createtable(L, nfields, 0); // [decode?, rows, columns]
    int columns = rows + 1;
    for (int j = 0; j < nfields; j++) {
        lua_pushstring(L, PQfname(res, j));
        lua_rawseti(L, columns, j + 1);
    }
    for (int i = 0; i < ntuples; i++) {
        lua_createtable(L, 0, nfields); // [decode?, rows, columns, row]
        for (int j = 0; j < nfields; j++) {
            lua_rawgeti(L, columns, j + 1);
            push_value(L, res, i, j, decode);
            lua_rawset(L, -3);
        }
        lua_rawseti(L, rows, i + 1);
    }
    lua_setfield(L, rows, "columns"); // [decode?, rows]
    lua_pushstring(L, PQcmdStatus((PGresult *)res));
    lua_setfield(L, rows, "command");
    const char *tuples = PQcmdTuples((PGresult *)res);
    if (*tuples) {
        lua_pushinteger(L, (lua_Integer)strtoll(tuples, NULL, 10));
        lua_setfield(L, rows, "affected");
    }
    if (decode)
        lua_remove(L, decode);
}

/* ---- results ---- */

/* Gets out of a COPY state the caller did not ask for: fails a COPY FROM STDIN (the server
 * then reports an error) and reads and drops the data of a COPY TO STDOUT. Without this
 * the next PQgetResult would wait forever for data we will never send. */
static int leave_copy(PGconn *pg, ExecStatusType st) {
    if (st == PGRES_COPY_IN || st == PGRES_COPY_BOTH) {
        if (PQputCopyEnd(pg, "COPY FROM STDIN is only supported through copy_in()") != 1)
            return 0;
    }
    if (st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
        char *buf;
        int n;
        while ((n = PQgetCopyData(pg, &buf, 0)) > 0)
            PQfreemem(buf);
        if (n == -2)
            return 0;
    }
    return 1;
}

/* Waits until the connection's next result can be read without blocking. The wait polls
 * the socket rather than sleeping in libpq, so that a SIGINT/SIGTERM arriving meanwhile
 * cancels the statement: without it a query blocked on a lock (a DBA's LOCK TABLE on the
 * history table) would hold the first signal for as long as the lock is held. The handler
 * itself cancels the connection marked cancel_on_signal; this one cancels any other. */
static void await_result(struct conn *c) {
    int seen = host_signal_count();
    while (PQisBusy(c->pg)) {
        if (host_signal_count() != seen) {
            seen = host_signal_count();
            char errbuf[256];
            if (c->cancel && c->cancel != signal_cancel)
                PQcancel(c->cancel, errbuf, sizeof errbuf);
        }
        struct pollfd pfd = {PQsocket(c->pg), POLLIN, 0};
        if (pfd.fd < 0)
            return; /* PQgetResult reports the broken connection */
        /* a signal interrupts poll (no SA_RESTART); the timeout covers one that comes
         * between the check above and the poll */
        int n = poll(&pfd, 1, 200);
        if (n > 0 && !PQconsumeInput(c->pg))
            return;
        if (n < 0 && errno != EINTR)
            return;
    }
}

static PGresult *next_result(struct conn *c) {
    await_result(c);
    return PQgetResult(c->pg);
}

/* Reads results, starting with r, until PQgetResult returns NULL, keeping in the box the
 * one to report: the first error, else the last. Calls no Lua, so holding r in a local is
 * safe. Returns 1 when it had to leave a COPY and the server may not report an error. */
static int collect(struct conn *c, struct result_box *box, PGresult *r) {
    PGconn *pg = c->pg;
    int refused = 0, copies = 0;
    while (r) {
        ExecStatusType st = PQresultStatus(r);
        if (is_copy(r)) {
            PQclear(r);
            refused = 1;
            /* A healthy connection leaves COPY at once; a broken one returns an error
             * result next. The bound only guards against a libpq we do not know. */
            if (!leave_copy(pg, st) && ++copies > 16)
                break;
        } else if (box->res && is_error(box->res)) {
            PQclear(r);
        } else {
            PQclear(box->res);
            box->res = r;
        }
        r = next_result(c);
    }
    return refused;
}

/* The result in the box (at the stack top) becomes the method's return values:
 * rows (or the command tag when !want_rows), "sync", or nil, err. Clears the box. */
static int push_outcome(lua_State *L, struct conn *c, struct result_box *box, int want_rows) {
    PGresult *res = box->res;
    int n = 1;
    switch (res ? PQresultStatus(res) : PGRES_FATAL_ERROR) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_SINGLE_TUPLE:
    case PGRES_EMPTY_QUERY:
        if (want_rows)
            push_rows(L, res);
        else
            lua_pushstring(L, PQcmdStatus(res));
        break;
    case PGRES_PIPELINE_SYNC:
        lua_pushliteral(L, "sync");
        break;
    case PGRES_PIPELINE_ABORTED:
        lua_pushnil(L);
        push_message_error(L, "not run: an earlier statement in the pipeline failed");
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "aborted");
        n = 2;
        break;
    default:
        lua_pushnil(L);
        push_error(L, c, res);
        n = 2;
    }
    result_release(box);
    return n;
}

/* Runs sql as PQexec (params < 0: several statements allowed) or PQexecParams would, but
 * waits for the results through await_result, so that a signal cancels it. The results
 * become the method's return values: the first error, else the last; an unexpected COPY
 * is left first. */
static int run_sql(lua_State *L, struct conn *c, const char *sql, int params, const char **values,
                   int want_rows) {
    struct result_box *box = push_result_box(L);
    if (PQpipelineStatus(c->pg) != PQ_PIPELINE_OFF) {
        result_release(box);
        lua_pushnil(L);
        push_message_error(L, "synchronous command execution functions are not allowed in "
                              "pipeline mode");
        return 2;
    }
    /* as PQexec does: results an earlier asynchronous query left unread are dropped */
    if (PQtransactionStatus(c->pg) == PQTRANS_ACTIVE) {
        collect(c, box, next_result(c));
        result_release(box);
    }
    int sent = params < 0 ? PQsendQuery(c->pg, sql)
                          : PQsendQueryParams(c->pg, sql, params, NULL, values, NULL, NULL, 0);
    if (!sent)
        return push_outcome(L, c, box, want_rows); /* no result: libpq's own error */
    if (collect(c, box, next_result(c)) && (!box->res || !is_error(box->res))) {
        result_release(box);
        lua_pushnil(L);
        push_message_error(L, "COPY TO STDOUT is not supported; its output was discarded");
        return 2;
    }
    return push_outcome(L, c, box, want_rows);
}

/* ---- module functions ---- */

/* What PQconnectdbParams is given. Later entries override earlier ones, and the expanded
 * dbname overrides everything before it: our defaults go first so a conninfo can change
 * them; an explicit connect_timeout from the caller goes last and wins. The values are
 * copies, since the connection may be made on another thread. */
struct connect_params {
    const char *keys[10];
    char *values[10];
};

static void params_free(struct connect_params *p) {
    for (int i = 0; p->keys[i]; i++)
        free(p->values[i]);
    memset(p, 0, sizeof *p);
}

/* Reads pg.connect's arguments (conninfo at 1, opts at 2) into p; 0, or ENOMEM. */
static int params_read(lua_State *L, struct connect_params *p) {
    const char *conninfo = luaL_checkstring(L, 1);
    const char *appname = "moonshift", *timeout = NULL;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        if (lua_getfield(L, 2, "application_name") != LUA_TNIL) {
            appname = lua_tostring(L, -1);
            luaL_argcheck(L, appname != NULL, 2, "application_name must be a string");
        }
        if (lua_getfield(L, 2, "connect_timeout") != LUA_TNIL) {
            int isint;
            lua_Integer seconds = lua_tointegerx(L, -1, &isint);
            luaL_argcheck(L, isint && seconds >= 0, 2, "connect_timeout must be whole seconds");
            timeout = lua_pushfstring(L, "%I", (LUAI_UACINT)seconds);
        }
    }
    const char *values[10];
    int k = 0;
    memset(p, 0, sizeof *p);
    /* A dead network is noticed within about 30 s, whether we are sending (unacknowledged
     * data, tcp_user_timeout) or waiting for a long statement (keepalives: 10 s idle, then
     * 3 probes 5 s apart); a server that never answers the handshake within 10 s. */
    p->keys[k] = "keepalives", values[k++] = "1";
    p->keys[k] = "keepalives_idle", values[k++] = "10";
    p->keys[k] = "keepalives_interval", values[k++] = "5";
    p->keys[k] = "keepalives_count", values[k++] = "3";
    p->keys[k] = "tcp_user_timeout", values[k++] = "30000";
    if (getenv("PGCONNECT_TIMEOUT") == NULL) /* a keyword here would override it */
        p->keys[k] = "connect_timeout", values[k++] = "10";
    p->keys[k] = "fallback_application_name", values[k++] = appname;
    p->keys[k] = "dbname", values[k++] = conninfo;
    if (timeout)
        p->keys[k] = "connect_timeout", values[k++] = timeout;
    int err = 0;
    for (int i = 0; i < k; i++)
        if ((p->values[i] = strdup(values[i])) == NULL)
            err = ENOMEM;
    if (err)
        params_free(p);
    return err;
}

static PGconn *connect_with(struct connect_params *p) {
    return PQconnectdbParams(p->keys, (const char *const *)p->values, 1);
}

/* [.., conn] -> [.., conn] | [.., conn, nil, err]: c takes pg (a connection attempt's
 * outcome), and closes it at once when it failed. */
static int finish_connection(lua_State *L, struct conn *c, PGconn *pg) {
    if (!pg)
        return luaL_error(L, "not enough memory");
    c->pg = pg;
    if (PQstatus(c->pg) != CONNECTION_OK) {
        lua_pushnil(L);
        lua_createtable(L, 0, 2);
        push_redacted(L, PQerrorMessage(c->pg));
        lua_setfield(L, -2, "message");
        lua_pushliteral(L, "connect");
        lua_setfield(L, -2, "kind");
        luaL_setmetatable(L, ERROR_META);
        PQfinish(c->pg);
        c->pg = NULL;
        return 2;
    }
    c->cancel = PQgetCancel(c->pg);
    PQsetNoticeReceiver(c->pg, on_notice, c);
    return 1;
}

static struct conn *new_conn(lua_State *L) {
    struct conn *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->notices_end = &c->notices;
    luaL_setmetatable(L, CONN_META); // [.., conn]
    return c;
}

/* pg.connect(conninfo [, opts]) -> conn | nil, err
 * opts: application_name (the fallback; default "moonshift"), connect_timeout (seconds). */
static int pg_lconnect(lua_State *L) {
    struct connect_params p;
    if (params_read(L, &p) != 0)
        return luaL_error(L, "not enough memory");
    struct conn *c = new_conn(L);
    PGconn *pg = connect_with(&p);
    params_free(&p);
    return finish_connection(L, c, pg);
}

/* A connection being made as a background job (pg.connect_begin). Shared with the job's
 * thread, so it is malloc'd: a caller that stops waiting abandons the job, which then
 * finishes the connection and frees this. */
struct pending {
    struct job *job;
    struct connect_params params;
    PGconn *pg;
};

static void pending_free(struct pending *p) {
    params_free(&p->params);
    free(p);
}

static void pending_run(void *arg) {
    struct pending *p = arg;
    p->pg = connect_with(&p->params);
}

static void pending_discard(void *arg) {
    struct pending *p = arg;
    PQfinish(p->pg);
    pending_free(p);
}

/* pg.connect_begin(conninfo [, opts]) -> pending
 * (Saves 7-10 % of status and a no-op up: bench/results/devices-*.md, against
 * MOONSHIFT_SERIAL=connect.)
 * Starts pg.connect as a background job (job.h), so that the server sets up the session
 * while the caller works; pending:wait() returns what pg.connect would. pending:close(),
 * or collecting it, gives up on it without waiting. */
static int pg_lconnect_begin(lua_State *L) {
    lua_settop(L, 2);
    struct pending **box = lua_newuserdatauv(L, sizeof *box, 0); // [conninfo, opts, box]
    *box = NULL;
    luaL_setmetatable(L, PENDING_META);
    struct pending *p = calloc(1, sizeof *p);
    if (p == NULL || params_read(L, &p->params) != 0) {
        free(p);
        return luaL_error(L, "not enough memory");
    }
    if ((p->job = job_start("connect", pending_run, p)) == NULL) {
        pending_free(p);
        return luaL_error(L, "not enough memory");
    }
    *box = p;
    lua_settop(L, 3);
    return 1; // box
}

static int pending_wait(lua_State *L) {
    struct pending **box = luaL_checkudata(L, 1, PENDING_META);
    struct pending *p = *box;
    luaL_argcheck(L, p != NULL, 1, "connection already waited for or closed");
    struct conn *c = new_conn(L);
    *box = NULL;
    job_wait(p->job);
    PGconn *pg = p->pg;
    pending_free(p);
    return finish_connection(L, c, pg);
}

static int pending_close(lua_State *L) {
    struct pending **box = luaL_checkudata(L, 1, PENDING_META);
    struct pending *p = *box;
    *box = NULL;
    if (p)
        job_abandon(p->job, pending_discard);
    return 0;
}

/* What is wrong with a connection string, from the start of libpq's message (the rest
 * quotes the input, which may be a password or a piece of one). Messages libpq does not
 * spell this way (another libpq, a translation) get the generic reason. */
static const char *conninfo_reason(const char *libpq_message) {
    static const struct {
        const char *prefix, *reason;
    } known[] = {
        {"missing \"=\" after", "a word is not followed by \"=\""},
        {"unterminated quoted string", "unterminated quoted string"},
        {"invalid connection option", "it names an unknown keyword"},
        {"invalid percent-encoded token", "invalid percent-encoding (\"%\" must be followed by "
                                          "two hexadecimal digits)"},
        {"forbidden value %00", "a percent-encoded zero byte (%00)"},
        {"extra key/value separator", "a query parameter with more than one \"=\""},
        {"missing key/value separator", "a query parameter without \"=\""},
        {"invalid URI query parameter", "a query parameter that names an unknown keyword"},
        {"unexpected character", "an unexpected character after the host"},
        {"end of string reached when looking for matching \"]\"", "an unclosed \"[\" in the host"},
        {"IPv6 host address may not be empty", "an empty IPv6 host \"[]\""},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strncmp(libpq_message, known[i].prefix, strlen(known[i].prefix)) == 0)
            return known[i].reason;
    return "malformed";
}

/* pg.conninfo_parse(s) -> { keyword = value } (only what s sets) | nil, err. Takes URIs and
 * key=value strings. libpq's message may quote the input, password included, so it is
 * not passed on: err.message is "invalid connection string", err.reason what is wrong,
 * in words that quote nothing of s. */
static int pg_lconninfo_parse(lua_State *L) {
    const char *s = luaL_checkstring(L, 1);
    struct options_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->opts = NULL;
    luaL_setmetatable(L, OPTIONS_META); // [s, box]
    char *errmsg = NULL;
    box->opts = PQconninfoParse(s, &errmsg);
    if (!box->opts) {
        int oom = errmsg == NULL; /* libpq reports a parse error, or nothing when out of memory */
        const char *reason = oom ? NULL : conninfo_reason(errmsg);
        PQfreemem(errmsg);
        if (oom)
            return luaL_error(L, "not enough memory");
        lua_pushnil(L);
        push_message_error(L, "invalid connection string");
        lua_pushstring(L, reason);
        lua_setfield(L, -2, "reason");
        return 2;
    }
    lua_newtable(L); // [s, box, t]
    for (const PQconninfoOption *o = box->opts; o->keyword; o++) {
        if (o->val) { /* an explicit empty value counts: it overrides the environment */
            lua_pushstring(L, o->val);
            lua_setfield(L, -2, o->keyword);
        }
    }
    PQconninfoFree(box->opts);
    box->opts = NULL;
    return 1;
}

/* pg.secret_keywords() -> { "password", "sslpassword", ... }: the keywords libpq itself
 * marks as secret (dispchar '*', "hide the value"), sorted, so that a keyword a newer libpq
 * adds is masked without a list of ours. */
static int pg_lsecret_keywords(lua_State *L) {
    struct options_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->opts = NULL;
    luaL_setmetatable(L, OPTIONS_META); // [box]
    box->opts = PQconndefaults();
    if (!box->opts)
        return luaL_error(L, "not enough memory");
    lua_newtable(L); // [box, t]
    lua_Integer n = 0;
    for (const PQconninfoOption *o = box->opts; o->keyword; o++) {
        if (o->dispchar && strchr(o->dispchar, '*')) {
            lua_pushstring(L, o->keyword);
            lua_seti(L, -2, ++n);
        }
    }
    PQconninfoFree(box->opts);
    box->opts = NULL;
    return 1;
}

static int options_gc(lua_State *L) {
    struct options_box *box = luaL_checkudata(L, 1, OPTIONS_META);
    PQconninfoFree(box->opts);
    box->opts = NULL;
    return 0;
}

static int pg_llib_version(lua_State *L) {
    lua_pushinteger(L, PQlibVersion());
    return 1;
}

/* ---- connection methods ---- */

static struct conn *check_conn(lua_State *L) {
    struct conn *c = luaL_checkudata(L, 1, CONN_META);
    if (!c->pg)
        luaL_error(L, "connection is closed");
    return c;
}

/* close(), __close and __gc: idempotent. */
static int conn_close(lua_State *L) {
    struct conn *c = luaL_checkudata(L, 1, CONN_META);
    if (c->cancel) {
        if (signal_cancel == c->cancel) {
            /* no signal handler may use it while it is freed */
            sigset_t block, old;
            sigemptyset(&block);
            sigaddset(&block, SIGINT);
            sigaddset(&block, SIGTERM);
            sigprocmask(SIG_BLOCK, &block, &old);
            signal_cancel = NULL;
            sigprocmask(SIG_SETMASK, &old, NULL);
        }
        PQfreeCancel(c->cancel);
        c->cancel = NULL;
    }
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    free_notices(c);
    return 0;
}

static int conn_tostring(lua_State *L) {
    struct conn *c = luaL_checkudata(L, 1, CONN_META);
    if (c->pg)
        lua_pushfstring(L, "%s (pid %d)", CONN_META, PQbackendPID(c->pg));
    else
        lua_pushfstring(L, "%s (closed)", CONN_META);
    return 1;
}

/* conn:query(sql, ...) -> rows | nil, err */
static int conn_query(lua_State *L) {
    struct conn *c = check_conn(L);
    const char *sql = luaL_checkstring(L, 2);
    int n;
    const char **values = check_params(L, 3, &n);
    return run_sql(L, c, sql, n, values, 1);
}

/* conn:exec(sql) -> command tag | nil, err; simple protocol, so several statements work */
static int conn_exec(lua_State *L) {
    struct conn *c = check_conn(L);
    const char *sql = luaL_checkstring(L, 2);
    return run_sql(L, c, sql, -1, NULL, 0);
}

/* Sends what reader (a function at index `fn`) returns, piece by piece, until nil; false
 * when the connection broke. A reader that raises ends the COPY with an error (the server
 * rolls it back) and its error is raised once the server has answered. */
static int copy_from_reader(lua_State *L, struct conn *c, int fn, int *raised) {
    for (;;) {
        lua_pushvalue(L, fn);
        if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
            *raised = lua_gettop(L);
            return PQputCopyEnd(c->pg, "moonshift could not read the COPY data") == 1 ? -1 : 0;
        }
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            return 1;
        }
        size_t len;
        const char *data = luaL_checklstring(L, -1, &len);
        for (size_t off = 0; off < len; off += COPY_CHUNK) {
            size_t chunk = len - off < COPY_CHUNK ? len - off : COPY_CHUNK;
            if (PQputCopyData(c->pg, data + off, (int)chunk) != 1) {
                lua_pop(L, 1);
                return 0;
            }
        }
        lua_pop(L, 1);
    }
}

/* conn:copy_in(sql, data) -> command tag | nil, err; data is a string, or a function that
 * returns the next piece (nil at the end), so large data never sit in memory at once */
static int conn_copy_in(lua_State *L) {
    struct conn *c = check_conn(L);
    const char *sql = luaL_checkstring(L, 2);
    size_t len = 0;
    const char *data = NULL;
    int reader = lua_type(L, 3) == LUA_TFUNCTION;
    if (!reader)
        data = luaL_checklstring(L, 3, &len);
    struct result_box *box = push_result_box(L);
    /* Extended protocol: one statement only, so nothing can follow the COPY. */
    PGresult *r = PQexecParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 0);
    if (!r || PQresultStatus(r) != PGRES_COPY_IN) {
        collect(c, box, r);
        if (!box->res || is_error(box->res))
            return push_outcome(L, c, box, 0);
        result_release(box);
        lua_pushnil(L);
        push_message_error(L, "copy_in() needs a COPY ... FROM STDIN statement");
        return 2;
    }
    PQclear(r);
    /* Only a broken connection makes these fail; a server error about the data arrives
     * as the final result (the server drops the rest of what we send). */
    int sent = 1, raised = 0;
    if (reader) {
        sent = copy_from_reader(L, c, 3, &raised); // [conn, sql, reader, box, error?]
        if (sent < 0)
            sent = 0;
        else if (sent)
            PQputCopyEnd(c->pg, NULL);
    }
    for (size_t off = 0; sent && off < len; off += COPY_CHUNK) {
        size_t chunk = len - off < COPY_CHUNK ? len - off : COPY_CHUNK;
        sent = PQputCopyData(c->pg, data + off, (int)chunk) == 1;
    }
    if (sent && !reader)
        PQputCopyEnd(c->pg, NULL);
    collect(c, box, PQgetResult(c->pg));
    if (raised) {
        result_release(box);
        lua_settop(L, 5);
        return lua_error(L);
    }
    return push_outcome(L, c, box, 0);
}

/* conn:send_query(sql, ...) -> true | nil, err (async; in pipeline mode, queues) */
static int conn_send_query(lua_State *L) {
    struct conn *c = check_conn(L);
    const char *sql = luaL_checkstring(L, 2);
    int n;
    const char **values = check_params(L, 3, &n);
    if (!PQsendQueryParams(c->pg, sql, n, NULL, values, NULL, NULL, 0))
        return fail_conn(L, c);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:get_result() -> rows | nil, err | false (no more for this query) | "sync" */
static int conn_get_result(lua_State *L) {
    struct conn *c = check_conn(L);
    struct result_box *box = push_result_box(L);
    box->res = PQgetResult(c->pg);
    if (!box->res) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (is_copy(box->res)) {
        /* Leave COPY but keep the result stream: the server's answer to the failed COPY
         * and the closing NULL still come through the next calls. */
        ExecStatusType st = PQresultStatus(box->res);
        result_release(box);
        leave_copy(c->pg, st);
        lua_pushnil(L);
        push_message_error(L, "COPY is not supported through get_result(); use copy_in()");
        return 2;
    }
    return push_outcome(L, c, box, 1);
}

static int push_ok(lua_State *L, struct conn *c, int ok) {
    if (!ok)
        return fail_conn(L, c);
    lua_pushboolean(L, 1);
    return 1;
}

static int conn_pipeline_enter(lua_State *L) {
    struct conn *c = check_conn(L);
    return push_ok(L, c, PQenterPipelineMode(c->pg));
}

static int conn_pipeline_exit(lua_State *L) {
    struct conn *c = check_conn(L);
    return push_ok(L, c, PQexitPipelineMode(c->pg));
}

static int conn_pipeline_sync(lua_State *L) {
    struct conn *c = check_conn(L);
    return push_ok(L, c, PQpipelineSync(c->pg));
}

/* Asks the server to send what it has so far: after each pipelined statement, so each
 * result arrives when it is done and is timed on its own, not all at the sync. */
static int conn_flush_request(lua_State *L) {
    struct conn *c = check_conn(L);
    return push_ok(L, c, PQsendFlushRequest(c->pg));
}

static int conn_consume_input(lua_State *L) {
    struct conn *c = check_conn(L);
    return push_ok(L, c, PQconsumeInput(c->pg));
}

static int conn_busy(lua_State *L) {
    lua_pushboolean(L, PQisBusy(check_conn(L)->pg));
    return 1;
}

static int conn_socket(lua_State *L) {
    lua_pushinteger(L, PQsocket(check_conn(L)->pg));
    return 1;
}

/* conn:cancel_on_signal(on): SIGINT/SIGTERM cancel this connection's statement. */
static int conn_cancel_on_signal(lua_State *L) {
    struct conn *c = check_conn(L);
    signal_cancel = lua_toboolean(L, 2) ? c->cancel : NULL;
    return 0;
}

/* conn:wait_readable(ms) -> true when the server sent something, false on timeout or a
 * signal (so a caller can show progress or react to Ctrl-C while a statement runs). */
static int conn_wait_readable(lua_State *L) {
    struct conn *c = check_conn(L);
    lua_Integer ms = luaL_optinteger(L, 2, -1);
    struct pollfd pfd = {PQsocket(c->pg), POLLIN, 0};
    if (pfd.fd < 0) {
        lua_pushboolean(L, 1); /* let the caller's next libpq call report the broken socket */
        return 1;
    }
    int n = poll(&pfd, 1, ms < 0 ? -1 : (ms > 3600000 ? 3600000 : (int)ms));
    lua_pushboolean(L, n > 0);
    return 1;
}

/* conn:cancel() -> true | nil, msg. PQcancel opens its own connection, so it works while
 * a query runs on this one (and is what a signal handler could call). */
static int conn_cancel(lua_State *L) {
    struct conn *c = check_conn(L);
    char errbuf[256];
    if (!c->cancel) {
        lua_pushnil(L);
        lua_pushliteral(L, "no cancel handle for this connection");
        return 2;
    }
    if (!PQcancel(c->cancel, errbuf, sizeof errbuf)) {
        lua_pushnil(L);
        push_redacted(L, errbuf);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:notices() -> { {severity=, sqlstate=, message=, detail=, hint=}, ..., dropped=n? } */
static int conn_notices(lua_State *L) {
    struct conn *c = check_conn(L);
    lua_createtable(L, (int)c->notice_count, 1); // [list]
    int i = 0;
    for (struct notice *n = c->notices; n; n = n->next) {
        lua_createtable(L, 0, 5); // [list, notice]
        set_string(L, "severity", n->severity);
        set_string(L, "sqlstate", n->sqlstate);
        set_string(L, "message", n->message);
        set_string(L, "detail", n->detail);
        set_string(L, "hint", n->hint);
        lua_rawseti(L, -2, ++i);
    }
    if (c->notices_dropped) {
        lua_pushinteger(L, (lua_Integer)c->notices_dropped);
        lua_setfield(L, -2, "dropped");
    }
    free_notices(c); /* only now: building the list may raise, and then nothing is lost */
    return 1;
}

static int conn_status(lua_State *L) {
    static const char *const names[] = {"idle", "active", "intrans", "inerror", "unknown"};
    PGTransactionStatusType st = PQtransactionStatus(check_conn(L)->pg);
    lua_pushstring(L, (unsigned)st < 5 ? names[st] : "unknown");
    return 1;
}

static int conn_ok(lua_State *L) {
    lua_pushboolean(L, PQstatus(check_conn(L)->pg) == CONNECTION_OK);
    return 1;
}

static int conn_server_version(lua_State *L) {
    lua_pushinteger(L, PQserverVersion(check_conn(L)->pg));
    return 1;
}

static int conn_backend_pid(lua_State *L) {
    lua_pushinteger(L, PQbackendPID(check_conn(L)->pg));
    return 1;
}

static int conn_parameter(lua_State *L) {
    struct conn *c = check_conn(L);
    const char *value = PQparameterStatus(c->pg, luaL_checkstring(L, 2));
    if (value)
        lua_pushstring(L, value);
    else
        lua_pushnil(L);
    return 1;
}

/* conn:info() -> {user=, dbname=, host=, port=}; the password is deliberately absent. */
static int conn_info(lua_State *L) {
    struct conn *c = check_conn(L);
    lua_createtable(L, 0, 6);
    set_string(L, "user", PQuser(c->pg));
    set_string(L, "dbname", PQdb(c->pg));
    set_string(L, "host", PQhost(c->pg));
    set_string(L, "hostaddr", PQhostaddr(c->pg));
    lua_pushboolean(L, PQsslInUse(c->pg));
    lua_setfield(L, -2, "ssl");
    const char *port = PQport(c->pg);
    if (port && *port) {
        char *end;
        long n = strtol(port, &end, 10);
        if (*end == '\0')
            lua_pushinteger(L, n);
        else
            lua_pushstring(L, port);
        lua_setfield(L, -2, "port");
    }
    return 1;
}

static int escape(lua_State *L, int identifier) {
    struct conn *c = check_conn(L);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    luaL_argcheck(L, strlen(s) == len, 2, "string contains a zero byte");
    struct mem *m = push_mem(L, 1);
    m->p = identifier ? PQescapeIdentifier(c->pg, s, len) : PQescapeLiteral(c->pg, s, len);
    if (!m->p)
        return fail_conn(L, c); /* e.g. invalid multibyte characters */
    lua_pushstring(L, m->p);
    mem_release(m);
    return 1;
}

static int conn_escape_identifier(lua_State *L) { return escape(L, 1); }

static int conn_escape_literal(lua_State *L) { return escape(L, 0); }

/* ---- registration ---- */

static const luaL_Reg funcs[] = {
    {"connect", pg_lconnect},
    {"connect_begin", pg_lconnect_begin},
    {"lib_version", pg_llib_version},
    {"conninfo_parse", pg_lconninfo_parse},
    {"secret_keywords", pg_lsecret_keywords},
    {NULL, NULL},
};

static const luaL_Reg methods[] = {
    {"query", conn_query},
    {"exec", conn_exec},
    {"copy_in", conn_copy_in},
    {"send_query", conn_send_query},
    {"get_result", conn_get_result},
    {"pipeline_enter", conn_pipeline_enter},
    {"pipeline_exit", conn_pipeline_exit},
    {"pipeline_sync", conn_pipeline_sync},
    {"flush_request", conn_flush_request},
    {"consume_input", conn_consume_input},
    {"busy", conn_busy},
    {"socket", conn_socket},
    {"cancel", conn_cancel},
    {"cancel_on_signal", conn_cancel_on_signal},
    {"wait_readable", conn_wait_readable},
    {"notices", conn_notices},
    {"status", conn_status},
    {"ok", conn_ok},
    {"server_version", conn_server_version},
    {"backend_pid", conn_backend_pid},
    {"parameter", conn_parameter},
    {"info", conn_info},
    {"escape_identifier", conn_escape_identifier},
    {"escape_literal", conn_escape_literal},
    {"close", conn_close},
    {NULL, NULL},
};

static const luaL_Reg metamethods[] = {
    {"__gc", conn_close},
    {"__close", conn_close},
    {"__tostring", conn_tostring},
    {NULL, NULL},
};

static void create_meta(lua_State *L) {
    support_new_meta(L, CONN_META, methods, metamethods);
    static const luaL_Reg result_metamethods[] = {{"__gc", result_gc}, {NULL, NULL}};
    support_new_meta(L, RESULT_META, NULL, result_metamethods);
    static const luaL_Reg mem_metamethods[] = {{"__gc", mem_gc}, {NULL, NULL}};
    support_new_meta(L, MEM_META, NULL, mem_metamethods);
    static const luaL_Reg options_metamethods[] = {{"__gc", options_gc}, {NULL, NULL}};
    support_new_meta(L, OPTIONS_META, NULL, options_metamethods);

    static const luaL_Reg pending_methods[] = {
        {"wait", pending_wait}, {"close", pending_close}, {NULL, NULL}};
    static const luaL_Reg pending_metamethods[] = {
        {"__gc", pending_close}, {"__close", pending_close}, {NULL, NULL}};
    support_new_meta(L, PENDING_META, pending_methods, pending_metamethods);

    static const luaL_Reg error_metamethods[] = {{"__tostring", error_tostring}, {NULL, NULL}};
    support_new_meta(L, ERROR_META, NULL, error_metamethods);
}

int luaopen_moonshift_pg(lua_State *L) {
    create_meta(L);
    luaL_newlib(L, funcs);
    lua_pushlightuserdata(L, &null_sentinel);
    lua_setfield(L, -2, "null");
    return 1;
}
