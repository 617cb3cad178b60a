-- What a statement is, from its first words as the C lexer reads them (sql.head): the one
-- classifier that source, runner and hooks share, so that a COMMIT behind a nested comment,
-- in any case, is seen the same way everywhere.
local sql = require("moonshift.sql")

local fmt = string.format

local statement = {}

local DIRECTIVE = "`-- moonshift:no-transaction`"

-- Each rule: a pattern on the head (words lowercased, comments dropped, one space between
-- tokens, punctuation a token of its own) and the name shown to the user.
local W = "%f[^%w_$]" -- the end of a word

-- Statements that end, begin or hand over a transaction. BEGIN never starts a statement
-- otherwise (BEGIN ATOMIC is inside CREATE FUNCTION).
local TRANSACTION_CONTROL = {
  { "^begin" .. W, "BEGIN" }, { "^start transaction" .. W, "START TRANSACTION" },
  { "^commit" .. W, "COMMIT" }, { "^end" .. W, "END" }, { "^abort" .. W, "ABORT" },
  { "^rollback" .. W, "ROLLBACK" }, { "^prepare transaction" .. W, "PREPARE TRANSACTION" },
}

-- Statements PostgreSQL refuses inside a transaction block.
local NO_TRANSACTION = {
  { "^create unique index concurrently" .. W, "CREATE INDEX CONCURRENTLY" },
  { "^create index concurrently" .. W, "CREATE INDEX CONCURRENTLY" },
  { "^drop index concurrently" .. W, "DROP INDEX CONCURRENTLY" },
  { "^reindex .-%f[%w_]concurrently" .. W, "REINDEX CONCURRENTLY" },
  { "^reindex schema" .. W, "REINDEX SCHEMA" },
  { "^reindex %( .-%) schema" .. W, "REINDEX SCHEMA" },
  { "^reindex database" .. W, "REINDEX DATABASE" },
  { "^reindex %( .-%) database" .. W, "REINDEX DATABASE" },
  { "^reindex system" .. W, "REINDEX SYSTEM" },
  { "^reindex %( .-%) system" .. W, "REINDEX SYSTEM" },
  { "^vacuum" .. W, "VACUUM" },
  { "^create database" .. W, "CREATE DATABASE" },
  { "^drop database" .. W, "DROP DATABASE" },
  { "^create tablespace" .. W, "CREATE TABLESPACE" },
  { "^drop tablespace" .. W, "DROP TABLESPACE" },
  { "^alter system" .. W, "ALTER SYSTEM" },
}

-- What a hook may not send besides transaction control: it would change who we are or
-- drop the run lock.
local HOOK_DENIED = {
  { "^set session authorization" .. W, "SET SESSION AUTHORIZATION" },
  { "^set role" .. W, "SET ROLE" }, { "^set session role" .. W, "SET ROLE" },
  { "^set local role" .. W, "SET ROLE" }, { "^reset all" .. W, "RESET ALL" },
  { "^reset role" .. W, "RESET ROLE" }, { "^reset session authorization" .. W,
    "RESET SESSION AUTHORIZATION" }, { "^discard" .. W, "DISCARD" },
}

local function match(rules, head)
  for _, rule in ipairs(rules) do
    if head:find(rule[1]) then return rule[2] end
  end
  return nil
end

--- A statement's first words (see sql.head) and the offset of the first one.
-- @param text string: one statement
-- @return string head, integer|nil offset (1-based; nil when it holds only comments)
function statement.head(text)
  return sql.head(text, 16)
end

--- The name of a transaction-control statement (BEGIN, COMMIT, ...), or nil.
-- @param text string: one statement
-- @return string|nil name, integer|nil offset of its first word
function statement.transaction_control(text)
  local head, at = sql.head(text, 3)
  return match(TRANSACTION_CONTROL, head), at
end

--- The name of a statement that cannot run inside a transaction block, or nil.
-- @return string|nil name, integer|nil offset of its first word
function statement.no_transaction(text)
  local head, at = sql.head(text, 16)
  return match(NO_TRANSACTION, head), at
end

--- Why a hook may not send this statement (its name), or nil when it may.
-- @return string|nil
function statement.denied_in_hook(text)
  local head = sql.head(text, 4)
  local name = match(TRANSACTION_CONTROL, head) or match(HOOK_DENIED, head)
  if name then return name end
  if text:lower():find("pg_advisory_unlock", 1, true) then return "pg_advisory_unlock" end
  return nil
end

--- The first statement of a script (as sql.split cuts it) that a hook may not send.
-- @return string|nil name
function statement.first_denied_in_hook(script)
  local stmts = sql.split(script)
  if not stmts then return statement.denied_in_hook(script) end
  for _, stmt in ipairs(stmts) do
    local name = statement.denied_in_hook(stmt.text)
    if name then return name end
  end
  return nil
end

-- The name of a psql meta-command statement, like `\i`.
local function meta_name(stmt)
  local m = type(stmt.meta) == "string" and stmt.meta or stmt.text
  local name = m:match("\\([%a!?]+)") or m:match("^%s*([%a!?]+)") or "?"
  return "\\" .. name
end

--- The line of byte pos in text (1-based).
function statement.line_of(text, pos)
  local _, n = text:sub(1, pos - 1):gsub("\n", "")
  return n + 1
end
local line_of = statement.line_of

-- Where the first word of a statement is in its file (stmt.line is already there).
local function first_line(stmt, pos)
  return line_of(stmt.text, pos or 1) + stmt.line - 1
end

-- The problems of statements that cannot run inside a transaction block, in a script that
-- is to run in one: how to take it out of one (`hint`: the layout's own marker), and when
-- it mixes them with statements that can, that it does.
local function no_transaction_problems(path, stmts, hint, alone)
  local found, other = {}, nil
  for _, stmt in ipairs(stmts) do
    if stmt.kind == "sql" then
      local name, pos = statement.no_transaction(stmt.text)
      if name then
        found[#found + 1] = { name = name, line = first_line(stmt, pos) }
      elseif not other then
        local _, at = sql.head(stmt.text, 1)
        other = first_line(stmt, at)
      end
    end
  end
  local problems = {}
  for _, f in ipairs(found) do
    if other then
      problems[#problems + 1] = fmt("%s:%d: %s cannot run inside a transaction block, and " ..
        "this migration mixes it with statements that can (line %d); move it to a migration " ..
        "of its own%s, or add %s to run them all without a transaction", path, f.line, f.name,
        other, alone and " (which then runs without a transaction)" or "", hint)
    else
      problems[#problems + 1] = fmt("%s:%d: %s cannot run inside a transaction block; add %s",
        path, f.line, f.name, hint)
    end
  end
  return problems
end

--- A migration script split into the statements psql would send, checked: no psql
-- meta-command, and in a transactional one no transaction control and nothing that cannot
-- run inside a transaction block.
-- @param path string: the file, for messages
-- @param text string: the script
-- @param offset integer: lines before the script in its file (a dbmate or goose section)
-- @param transactional boolean
-- @param opts table|nil: `hint`, how to take this script out of a transaction in its layout
--   (default: add `-- moonshift:no-transaction` to the file); `alone`, true when a script
--   of only statements that cannot run in a transaction runs without one in its layout
-- @return statements | nil, and the problems found ("file:line: message" each, maybe none)
function statement.script(path, text, offset, transactional, opts)
  opts = opts or {}
  local stmts, err = sql.split(text)
  if not stmts then
    return nil, { fmt("%s:%d: %s", path, (tonumber(err.line) or 1) + offset,
      err.message or tostring(err)) }
  end
  local problems = {}
  for _, stmt in ipairs(stmts) do
    stmt.line = stmt.line + offset
    if stmt.end_line then stmt.end_line = stmt.end_line + offset end
    statement.check(path, stmt, transactional, problems)
  end
  if transactional then
    for _, p in ipairs(no_transaction_problems(path, stmts, opts.hint or
        DIRECTIVE .. " to the file", opts.alone)) do
      problems[#problems + 1] = p
    end
  end
  if problems[1] then return nil, problems end
  return stmts, problems
end

--- Adds to `problems` what keeps one statement of a script from running (see
-- statement.script).
-- @param each_no_transaction boolean: also refuse, one by one, statements that cannot run
--   in a transaction block (a streamed file; a whole one is judged as a whole instead)
function statement.check(path, stmt, transactional, problems, each_no_transaction)
  if stmt.kind == "meta" then
    problems[#problems + 1] = fmt("%s:%d: psql meta-command %s cannot run on the server",
      path, stmt.line, meta_name(stmt))
  elseif transactional then
    local name, pos
    if each_no_transaction then
      name, pos = statement.no_transaction(stmt.text)
      if name then
        problems[#problems + 1] = fmt("%s:%d: %s cannot run inside a transaction; add %s to " ..
          "this migration", path, line_of(stmt.text, pos) + stmt.line - 1, name, DIRECTIVE)
      end
    end
    name, pos = statement.transaction_control(stmt.text)
    if name then
      problems[#problems + 1] = fmt("%s:%d: %s: moonshift runs each migration in its own " ..
        "transaction and records it in the same one; remove this statement (or add %s to " ..
        "this migration)", path, line_of(stmt.text, pos) + stmt.line - 1, name, DIRECTIVE)
    end
  end
end

-- The length of a streamed statement list: its count.
local STREAMED = { __len = function(list) return list.count end }

--- The statements of a large script file, checked as statement.script checks them while
-- they stream past, but not kept: a list with no entries, `stream` (the path, to read them
-- again with sql.stream when they run) and `count` (also its length).
-- @param file string: the path to read; path: the file as messages name it
-- @return list | nil, problems (at most 20)
function statement.stream_script(file, path, transactional)
  local s <close>, msg = sql.stream(file)
  if not s then return nil, { fmt("cannot read %s", msg) } end
  local problems, count = {}, 0
  while #problems < 20 do
    local stmt, err = s:next()
    if not stmt then
      if err then
        problems[#problems + 1] = fmt("%s:%d: %s", path, tonumber(err.line) or 1,
          err.message or tostring(err))
      end
      break
    end
    count = count + 1
    statement.check(path, stmt, transactional, problems, true)
  end
  if problems[1] then return nil, problems end
  return setmetatable({ stream = file, count = count }, STREAMED), problems
end

--- Command tags after which the migration's own transaction is over (PQcmdStatus).
statement.ENDS_TRANSACTION = { COMMIT = true, ROLLBACK = true, ["PREPARE TRANSACTION"] = true,
  ["COMMIT PREPARED"] = true, ["ROLLBACK PREPARED"] = true }

return statement
