-- A restore that restores: after a run that created, altered and dropped things and then
-- failed, `moonshift restore` (and the printed pg_restore command) give back exactly the
-- database as it was before the run.
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

local value = helpers.value

local BEFORE = {
  ["migrations/0001_tasks.up.sql"] = [[
CREATE TABLE tasks (id int PRIMARY KEY, title text NOT NULL);
INSERT INTO tasks SELECT g, 'task ' || g FROM generate_series(1, 50) g;
CREATE TABLE archive (id int PRIMARY KEY, note text);
INSERT INTO archive VALUES (1, 'old');
CREATE VIEW open_tasks AS SELECT id, title FROM tasks;
]],
}

-- 0002 changes a lot and commits; 0003 fails.
local RUN = {
  ["migrations/0002_labels.up.sql"] = [[
CREATE SCHEMA reports;
CREATE TABLE reports.daily (day date PRIMARY KEY);
CREATE TYPE priority AS ENUM ('low', 'high');
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TABLE labels (id int PRIMARY KEY, name citext, p priority);
CREATE TABLE task_labels (task int REFERENCES tasks, label int REFERENCES labels);
ALTER TABLE tasks ADD COLUMN done boolean DEFAULT false;
UPDATE tasks SET title = upper(title) WHERE id < 10;
DELETE FROM tasks WHERE id > 40;
DROP VIEW open_tasks;
DROP TABLE archive;
]],
  ["migrations/0003_broken.up.sql"] = "CREATE TABLE x (id int);\nSELECT nosuch FROM tasks;\n",
}

describe("restore #e2e", function()
  local db = helpers.database({ files = BEFORE })
  local server_newer

  before_each(function()
    server_newer = tonumber(value(db.uri, "SHOW server_version_num")) >= 160000
  end)

  local function dump(...)
    local argv = { db.cluster.bin_dir .. "/pg_dump", ... }
    argv[#argv + 1] = db.uri
    local res = assert(proc.run(argv, { env = helpers.env() }))
    assert.are.equal(0, res.code, res.stderr)
    -- pg_dump's \restrict key is random in every dump
    return (res.stdout:gsub("\n\\u?n?restrict [^\n]*", "\n"))
  end

  local function snapshot()
    return { schema = dump("--schema-only"),
      -- the events (and their id sequence) gain the restore's own event
      data = dump("--data-only", "--exclude-table=moonshift_events*") }
  end

  local function drop_kept()
    for _, row in ipairs(helpers.query(db.uri, "SELECT datname FROM pg_database WHERE " ..
      "datname LIKE $1", db.name .. "_before_restore_%")) do
      helpers.query(db.uri, "DROP DATABASE \"" .. row.datname .. "\" WITH (FORCE)")
    end
  end

  it("returns to the state before a failed run, by moonshift restore and by the printed " ..
    "pg_restore command", function()
    if server_newer then -- Debian's pg_dump 15 cannot dump the matrix's newer server
      local res = helpers.ms({ "restore", "-y" })
      assert.are.equal(2, res.code, res.stderr)
      assert.matches("no backup of", res.stderr)
      return
    end
    finally(drop_kept)
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    local before = snapshot()
    local events_before = value(db.uri, "SELECT count(*) FROM moonshift_events")
    helpers.write_files(db.dir, RUN)
    local res = helpers.ms({ "up", "-y", "--backup-first" })
    assert.are.equal(6, res.code, res.stderr)
    assert.matches("to return to the state before this run:\n    moonshift restore " ..
      "moonshift%-backups/", res.stderr)
    local plain = res.stderr:match("or with PostgreSQL's tools[^\n]*\n    ([^\n]+)")
    assert.is_truthy(plain, res.stderr)
    assert.are.equal("labels", value(db.uri, "SELECT to_regclass('labels')::text"))

    local r = helpers.ms({ "restore", "-y" })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("restored .* from moonshift%-backups/.* in .*; now at 0001", r.stdout)
    assert.matches("kept as " .. db.name:gsub("%p", "%%%0") .. "_before_restore_", r.stderr)
    local after = snapshot()
    assert.are.equal(before.schema, after.schema)
    assert.are.equal(before.data, after.data)
    assert.are.equal(events_before + 1, value(db.uri, "SELECT count(*) FROM moonshift_events"))
    assert.are.equal("restore", value(db.uri, "SELECT action FROM moonshift_events " ..
      "ORDER BY id DESC LIMIT 1"))
    local st = helpers.ms({ "status" })
    assert.matches("1 applied, 2 pending", st.stdout)
    drop_kept()

    -- the same failure again, undone with PostgreSQL's own tools this time
    res = helpers.ms({ "up", "-y", "--backup-first" })
    assert.are.equal(6, res.code, res.stderr)
    plain = res.stderr:match("or with PostgreSQL's tools[^\n]*\n    ([^\n]+)")
    local sh = assert(proc.run({ "/bin/sh", "-c", plain }, { cwd = db.dir, env = helpers.env() }))
    assert.are.equal(0, sh.code, sh.stderr)
    after = snapshot()
    assert.are.equal(before.schema, after.schema)
    assert.are.equal(before.data, after.data)
  end)

  it("says no restore is needed when nothing of the run committed", function()
    if server_newer then return assert.is_true(server_newer) end
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    helpers.write_files(db.dir, { ["migrations/0002_broken.up.sql"] =
      "CREATE TABLE x (id int);\nSELECT nosuch FROM tasks;\n" })
    local res = helpers.ms({ "up", "-y", "--backup-first" })
    assert.are.equal(6, res.code, res.stderr)
    assert.matches("nothing of this run was committed; no restore needed", res.stderr)
    assert.is_nil(res.stderr:find("pg_restore", 1, true))
  end)

  it("refuses while another session uses the database, unless --terminate", function()
    if server_newer then return assert.is_true(server_newer) end
    finally(drop_kept)
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    assert.are.equal(0, helpers.ms({ "backup" }).code)
    local holder = assert(proc.spawn({ db.cluster.bin_dir .. "/psql", db.uri, "-c",
      "SELECT pg_sleep(30)" }, { env = helpers.env() }))
    finally(function() holder:kill("KILL"); holder:wait(5000) end)
    helpers.wait_for_query(db.uri, "%pg_sleep(30)%")
    local res = helpers.ms({ "restore", "-y" })
    assert.are.equal(9, res.code, res.stderr)
    assert.matches("is in use by pid %d+ %(psql", res.stderr)
    assert.matches("nothing was changed", res.stderr)
    assert.are.equal(0, value(db.uri, "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
      db.name .. "_before_restore_%"))
    res = helpers.ms({ "restore", "-y", "--terminate" })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal(1, value(db.uri, "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
      db.name .. "_before_restore_%"))
    assert.is_true(fs.exists(db.dir .. "/moonshift-backups"))
  end)

  it("takes a backup before down with --backup-first, and with backup.before_run", function()
    if server_newer then return assert.is_true(server_newer) end
    helpers.write_files(db.dir, { ["migrations/0001_tasks.down.sql"] = "DROP VIEW open_tasks;\n" ..
      "DROP TABLE archive;\nDROP TABLE tasks;\n" })
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    local res = helpers.ms({ "down", "-y", "--backup-first" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("backup: moonshift%-backups/.*%.dump", res.stderr)
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    helpers.write_files(db.dir, { ["migrate.lua"] = "return { backup = { before_run = true } }\n" })
    res = helpers.ms({ "redo", "-y" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("backup: moonshift%-backups/.*%.dump", res.stderr)
    local dumps = 0
    for _, name in ipairs(fs.list(db.dir .. "/moonshift-backups")) do
      if name:match("%.dump$") then dumps = dumps + 1 end
    end
    assert.are.equal(2, dumps)
  end)
end)
