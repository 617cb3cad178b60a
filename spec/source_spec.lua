-- Specs for moonshift.source: every layout, the directives, checksums and each refusal,
-- on migration directories written into a temporary directory.
local fs = require("moonshift.fs")
local hash = require("moonshift.hash")
local source = require("moonshift.source")
local cache_mod = require("moonshift.cache")
local helpers = require("spec.helpers")

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

-- Writes a tree: names map to file contents, or to tables for subdirectories.
local function write_tree(dir, tree)
  assert(fs.mkdir_p(dir, tonumber("755", 8)))
  for name, content in pairs(tree) do
    if type(content) == "table" then
      write_tree(dir .. "/" .. name, content)
    else
      write_file(dir .. "/" .. name, content)
    end
  end
end

local ids = helpers.ids

describe("moonshift.source", function()
  local tmp, dir

  before_each(function()
    tmp = assert(fs.mkdtemp("/tmp/moonshift-source-"))
    dir = tmp .. "/migrations"
  end)

  after_each(function()
    assert(fs.remove_tree(tmp))
  end)

  -- Loads `tree` written as the migrations directory.
  local function load(tree, opts)
    write_tree(dir, tree)
    return source.load(dir, opts)
  end

  -- Loads `tree`, expects a refusal and returns its message.
  local function refused(tree, opts)
    local set, err = load(tree, opts)
    assert.is_nil(set)
    assert.equal("usage", err.kind)
    assert.equal(err.message, tostring(err))
    return err.message, err
  end

  describe("native layout", function()
    it("reads up and down pairs and lone up-only files in version order", function()
      local set = assert(load({
        ["0010_ten.up.sql"] = "create table ten (id int);\n",
        ["0010_ten.down.sql"] = "drop table ten;\n",
        ["0009_nine.sql"] = "create table nine (id int);\ncreate index on nine (id);\n",
        ["0001_init.up.sql"] = "create table one (id int);\n",
        ["0001_init.down.sql"] = "drop table one;\n",
      }))
      assert.equal("native", set.format)
      assert.equal(dir, set.dir)
      assert.same({ "0001_init", "0009_nine", "0010_ten" }, ids(set.migrations))
      local one, nine, ten = table.unpack(set.migrations)
      assert.equal("0001", one.version)
      assert.equal("1", one.key)
      assert.equal("init", one.name)
      assert.equal("native", one.format)
      assert.equal(dir .. "/0001_init.up.sql", one.up_path)
      assert.equal(dir .. "/0001_init.down.sql", one.down_path)
      assert.equal("drop table one;\n", one.down_sql)
      assert.equal(1, #one.down_statements)
      assert.is_true(one.transaction)
      assert.is_nil(nine.down_path)
      assert.is_nil(nine.down_sql)
      assert.equal(2, #nine.statements)
      assert.equal(2, nine.statements[2].line)
      assert.equal("ten", ten.name)
      assert.equal(ten, set.by_key["10"])
      assert.equal(nine, set.by_key["9"])
      assert.same({}, set.repeatables)
    end)

    it("orders by the numeric value of the version, 9 before 10", function()
      local set = assert(load({
        ["10_b.sql"] = "select 10;", ["9_a.sql"] = "select 9;", ["100_c.sql"] = "select 100;",
      }))
      assert.same({ "9_a", "10_b", "100_c" }, ids(set.migrations))
    end)

    it("orders 14-digit timestamps and 20-digit versions exactly", function()
      local set = assert(load({
        ["99999999999999999999_b.sql"] = "select 2;",
        ["99999999999999999998_a.sql"] = "select 1;",
        ["20190226002946_t.sql"] = "select 0;",
      }))
      assert.same({ "20190226002946_t", "99999999999999999998_a", "99999999999999999999_b" },
        ids(set.migrations))
    end)

    it("keeps names with dots and underscores (golang-migrate's harbor style)", function()
      local set = assert(load({ ["0002_1.7.0_schema.up.sql"] = "select 1;" }))
      local m = set.migrations[1]
      assert.equal("0002", m.version)
      assert.equal("1.7.0_schema", m.name)
      assert.equal("0002_1.7.0_schema", m.id)
    end)

    it("attaches a Lua companion and a verify script with the same base", function()
      local set = assert(load({
        ["0003_add_email.up.sql"] = "alter table users add email text;",
        ["0003_add_email.lua"] = "return {}",
        ["0003_add_email.verify.sql"] = "select email from users limit 0;",
        ["0004_other.sql"] = "select 1;",
      }))
      local m, other = set.migrations[1], set.migrations[2]
      assert.equal(dir .. "/0003_add_email.lua", m.companion_path)
      assert.equal(dir .. "/0003_add_email.verify.sql", m.verify_path)
      assert.is_nil(other.companion_path)
      assert.is_nil(other.verify_path)
    end)

    it("reads an empty directory as an empty native set", function()
      local set = assert(load({}))
      assert.equal("native", set.format)
      assert.same({}, set.migrations)
    end)

    it("accepts a trailing slash on the directory", function()
      write_tree(dir, { ["0001_a.sql"] = "select 1;" })
      local set = assert(source.load(dir .. "/"))
      assert.equal(dir .. "/0001_a.sql", set.migrations[1].up_path)
    end)
  end)

  describe("Flyway layout", function()
    it("reads versioned, undo and repeatable scripts", function()
      local set = assert(load({
        ["V1__init.sql"] = "create table a (id int);",
        ["V1_1__patch.sql"] = "alter table a add b int;",
        ["V2__add_email.sql"] = "alter table a add email text;",
        ["U2__add_email.sql"] = "alter table a drop email;",
        ["V10__ten.sql"] = "select 10;",
        ["R__views.sql"] = "create or replace view v as select 1;",
        ["R__a_functions.sql"] = "select 1;",
      }))
      assert.equal("flyway", set.format)
      assert.same({ "V1__init", "V1_1__patch", "V2__add_email", "V10__ten" },
        ids(set.migrations))
      local init, patch, email = table.unpack(set.migrations)
      assert.equal("1", init.version)
      assert.equal("init", init.name)
      assert.equal("1.1", patch.version)
      assert.equal("1.1", patch.key)
      assert.equal("2", email.version)
      assert.equal("add_email", email.name)
      assert.equal(dir .. "/U2__add_email.sql", email.down_path)
      assert.equal("alter table a drop email;", email.down_sql)
      assert.is_nil(init.down_sql)
      assert.equal("flyway", email.format)
      assert.same({ "R__a_functions", "R__views" }, ids(set.repeatables))
      local views = set.repeatables[2]
      assert.is_true(views.repeatable)
      assert.equal("views", views.name)
      assert.equal(dir .. "/R__views.sql", views.up_path)
      assert.equal(hash.sha256("create or replace view v as select 1;"), views.checksum)
      assert.equal(1, #views.statements)
      assert.is_true(views.transaction)
    end)

    it("reads executeInTransaction=false from a script's .conf file", function()
      local set = assert(load({
        ["V1__index.sql"] = "create index concurrently i on t (x);",
        ["V1__index.sql.conf"] = "executeInTransaction=false\n",
      }))
      assert.is_false(set.migrations[1].transaction)
    end)

    it("attaches companions named after the script", function()
      local set = assert(load({
        ["V3__x.sql"] = "select 1;", ["V3__x.lua"] = "return {}", ["V3__x.verify.sql"] = "select 1",
      }))
      assert.equal(dir .. "/V3__x.lua", set.migrations[1].companion_path)
      assert.equal(dir .. "/V3__x.verify.sql", set.migrations[1].verify_path)
    end)

    it("refuses V1_1 and V1.1 as the same version", function()
      local msg = refused({ ["V1_1__a.sql"] = "select 1;", ["V1.1__b.sql"] = "select 2;" })
      assert.matches("duplicate version 1.1", msg, 1, true)
    end)

    it("refuses an undo script without its versioned script", function()
      local msg, err = refused({ ["V1__a.sql"] = "select 1;", ["U2__b.sql"] = "select 2;" })
      assert.equal(dir .. "/U2__b.sql is an undo script without an up script (V2__*.sql)", msg)
      assert.equal(dir .. "/U2__b.sql", err.file)
    end)
  end)

  describe("dbmate layout", function()
    it("splits the file into up and down sections", function()
      local text = "-- a comment\n-- migrate:up\ncreate table t (id int);\n\n" ..
        "insert into t values (1);\n\n-- migrate:down\ndrop table t;\n"
      local set = assert(load({ ["20190226002946_create_t.sql"] = text }))
      assert.equal("dbmate", set.format)
      local m = set.migrations[1]
      assert.equal("dbmate", m.format)
      assert.equal("20190226002946", m.version)
      assert.equal("create_t", m.name)
      assert.equal("create table t (id int);\n\ninsert into t values (1);\n\n", m.up_sql)
      assert.equal("drop table t;\n", m.down_sql)
      assert.equal(dir .. "/20190226002946_create_t.sql", m.down_path)
      assert.equal(2, #m.statements)
      -- lines point into the file, not into the section
      assert.equal(3, m.statements[1].line)
      assert.equal(5, m.statements[2].line)
      assert.equal(8, m.down_statements[1].line)
      assert.is_true(m.transaction)
      assert.equal(hash.sha256(m.up_sql), m.checksum)
    end)

    it("reads transaction:false on the up and down lines", function()
      local set = assert(load({
        ["1_idx.sql"] = "-- migrate:up transaction:false\ncreate index concurrently i on t (x);\n" ..
          "-- migrate:down transaction:false\ndrop index concurrently i;\n",
        ["2_plain.sql"] = "-- migrate:up\nselect 1;\n-- migrate:down\nselect 2;\n",
      }))
      local idx, plain = table.unpack(set.migrations)
      assert.is_false(idx.transaction)
      assert.is_false(idx.down_transaction)
      assert.is_true(plain.transaction)
      assert.is_true(plain.down_transaction)
    end)

    it("has no down script without a down section", function()
      local set = assert(load({ ["1_a.sql"] = "-- migrate:up\nselect 1;\n" }))
      assert.is_nil(set.migrations[1].down_sql)
    end)

    it("refuses SQL before the up section and a second up section", function()
      local msg = refused({ ["1_a.sql"] = "select 0;\n-- migrate:up\nselect 1;\n" })
      assert.matches(dir .. "/1_a.sql:1: text before `-- migrate:up`", msg, 1, true)
      assert(fs.remove_tree(dir))
      msg = refused({ ["1_a.sql"] = "-- migrate:up\nselect 1;\n-- migrate:up\nselect 2;\n" })
      assert.matches(dir .. "/1_a.sql:3: a second `-- migrate:up` section", msg, 1, true)
    end)
  end)

  describe("goose layout", function()
    it("splits Up and Down sections and reads NO TRANSACTION", function()
      local set = assert(load({
        ["00001_create.sql"] = "-- +goose Up\ncreate table t (id int);\n" ..
          "-- +goose Down\ndrop table t;\n",
        ["00002_idx.sql"] = "-- +goose NO TRANSACTION\n-- +goose Up\n" ..
          "create index concurrently i on t (id);\n-- +goose Down\ndrop index concurrently i;\n",
      }))
      assert.equal("goose", set.format)
      local create, idx = table.unpack(set.migrations)
      assert.equal("create table t (id int);\n", create.up_sql)
      assert.equal("drop table t;\n", create.down_sql)
      assert.is_true(create.transaction)
      assert.is_false(idx.transaction)
      assert.equal(3, idx.statements[1].line)
    end)
  end)

  describe("sql-migrate layout", function()
    it("splits Up and Down sections and reads notransaction on either line", function()
      local set = assert(load({
        ["1_create.sql"] = "-- +migrate Up\ncreate table t (id int);\n\n" ..
          "-- +migrate Down\ndrop table t;\n",
        ["2_idx.sql"] = "-- +migrate Up notransaction\ncreate index concurrently i on t (id);\n" ..
          "-- +migrate Down\ndrop index i;\n",
        ["3_func.sql"] = "-- +migrate Up\n-- +migrate StatementBegin\n" ..
          "create function f() returns int language plpgsql as $$ begin return 1; end $$;\n" ..
          "-- +migrate StatementEnd\n-- +migrate Down notransaction\ndrop function f();\n",
      }))
      assert.equal("sql-migrate", set.format)
      local create, idx, func = table.unpack(set.migrations)
      assert.equal("create table t (id int);\n\n", create.up_sql)
      assert.equal("drop table t;\n", create.down_sql)
      assert.is_true(create.transaction and create.down_transaction)
      assert.is_false(idx.transaction)
      assert.is_false(idx.down_transaction)
      assert.equal(2, idx.statements[1].line)
      assert.is_true(func.transaction)
      assert.is_false(func.down_transaction)
      assert.equal(1, #func.statements)
    end)

    it("reads the names sql-migrate new writes, only with sql-migrate's sections", function()
      local set = assert(load({
        ["20240101120000-create.sql"] = "-- +migrate Up\ncreate table t (id int);\n" ..
          "-- +migrate Down\ndrop table t;\n",
        ["20240102120000-more.sql"] = "-- +migrate Up\nselect 1;\n",
      }))
      assert.equal("sql-migrate", set.format)
      assert.same({ "20240101120000-create", "20240102120000-more" }, helpers.ids(set.migrations))
      assert.equal("drop table t;\n", set.migrations[1].down_sql)
      assert(fs.remove_tree(dir))
      local msg = refused({ ["1-a.sql"] = "select 1;\n" })
      assert.matches("1-a.sql matches no migration layout", msg, 1, true)
    end)

    it("reads the section lines only as sql-migrate spells them", function()
      local set = assert(load({ ["1_a.sql"] = "--  +migrate up\nselect 1;\n" }))
      assert.equal("native", set.format)
    end)

    it("asks for notransaction where sql-migrate needs it", function()
      local msg = refused({ ["1_a.sql"] = "-- +migrate Up\ncreate index concurrently i on t (x);\n" ..
        "-- +migrate Down\ndrop index concurrently i;\n" })
      assert.matches("1_a.sql:2: CREATE INDEX CONCURRENTLY cannot run inside a transaction " ..
        "block; add `notransaction` to its `-- +migrate Up` line", msg, 1, true)
      assert.matches("1_a.sql:4: DROP INDEX CONCURRENTLY cannot run inside a transaction " ..
        "block; add `notransaction` to its `-- +migrate Down` line", msg, 1, true)
    end)
  end)

  describe("diesel layout", function()
    it("reads one directory per migration", function()
      local set = assert(load({
        ["2019-02-26-002946_create_user"] = {
          ["up.sql"] = "create table users (id int);", ["down.sql"] = "drop table users;",
          ["migration.lua"] = "return {}", ["verify.sql"] = "select 1 from users limit 0",
        },
        ["2019-03-01-000000_add_index"] = {
          ["up.sql"] = "create index concurrently i on users (id);",
          ["down.sql"] = "drop index i;",
          ["metadata.toml"] = "run_in_transaction = false\n",
        },
        ["00000000000000_diesel_initial_setup"] = { ["up.sql"] = "select 0;" },
      }))
      assert.equal("diesel", set.format)
      assert.same({ "00000000000000_diesel_initial_setup", "2019-02-26-002946_create_user",
        "2019-03-01-000000_add_index" }, ids(set.migrations))
      local _, user, index = table.unpack(set.migrations)
      assert.equal("2019-02-26-002946", user.version)
      assert.equal("2019.2.26.2946", user.key)
      assert.equal("create_user", user.name)
      assert.equal("diesel", user.format)
      local base = dir .. "/2019-02-26-002946_create_user"
      assert.equal(base .. "/up.sql", user.up_path)
      assert.equal(base .. "/down.sql", user.down_path)
      assert.equal("drop table users;", user.down_sql)
      assert.equal(base .. "/migration.lua", user.companion_path)
      assert.equal(base .. "/verify.sql", user.verify_path)
      assert.is_true(user.transaction)
      assert.is_false(index.transaction)
    end)

    it("refuses a stray file in a migration directory and one without up.sql", function()
      local msg = refused({ ["2019-02-26-002946_a"] = { ["up.sql"] = "", ["notes.sql"] = "" } })
      assert.matches("2019-02-26-002946_a/notes.sql does not belong", msg, 1, true)
      assert(fs.remove_tree(dir))
      msg = refused({ ["2019-02-26-002946_a"] = { ["down.sql"] = "select 1;" } })
      assert.matches("2019-02-26-002946_a/down.sql has no up.sql", msg, 1, true)
    end)
  end)

  describe("transaction directives", function()
    it("reads -- moonshift:no-transaction on a line of its own, in any case, and goose's",
      function()
      local set = assert(load({
        ["1_a.sql"] = "-- moonshift:no-transaction\ncreate index concurrently a on t (x);",
        ["2_b.sql"] = "select 1;\n   --   MOONSHIFT:No-Transaction  \nvacuum t;",
        ["3_c.sql"] = "select 1; -- moonshift:no-transaction\n",
        ["4_d.sql"] = "-- moonshift:no-transactions\nselect 1;",
        ["6_f.sql"] = "-- +goose NO TRANSACTION\ncreate index concurrently f on t (x);",
        ["5_e.up.sql"] = "select 1;",
        ["5_e.down.sql"] = "-- moonshift:no-transaction\ndrop index concurrently a;",
      }))
      local a, b, c, d, e, f = table.unpack(set.migrations)
      assert.is_false(f.transaction)
      assert.is_false(a.transaction)
      assert.is_false(b.transaction)
      assert.is_true(c.transaction)
      assert.is_true(d.transaction)
      assert.is_true(e.transaction)
      assert.is_false(e.down_transaction)
    end)

    it("reads morph's marker only where morph does: first in a .up.sql or .down.sql", function()
      local set = assert(load({
        ["1_a.up.sql"] = "-- morph:nontransactional\nselect 1;",
        ["2_b.up.sql"] = "select 1;\n-- morph:nontransactional\n",
        ["3_c.up.sql"] = "select 1;",
        ["3_c.down.sql"] = "-- morph:nontransactional\nselect 2;",
      }))
      local a, b, c = table.unpack(set.migrations)
      assert.is_false(a.transaction)
      assert.is_nil(a.no_transaction_auto)
      assert.is_true(a.down_transaction == nil) -- no down script
      assert.is_true(b.transaction)
      assert.is_true(c.transaction)
      assert.is_false(c.down_transaction)
      assert(fs.remove_tree(dir))
      set = assert(load({ ["4_d.sql"] = "-- morph:nontransactional\nselect 1;" }))
      assert.is_true(set.migrations[1].transaction) -- a lone file is not morph's
    end)

    it("runs a native or Flyway script of only no-transaction statements without one",
      function()
      local set = assert(load({
        ["1_a.up.sql"] = "create index concurrently a on t (x);\nvacuum t;",
        ["1_a.down.sql"] = "drop index a;",
        ["2_b.up.sql"] = "select 1;",
        ["2_b.down.sql"] = "drop index concurrently b;",
        ["3_c.sql"] = "reindex table concurrently t;",
      }))
      local a, b, c = table.unpack(set.migrations)
      assert.is_false(a.transaction)
      assert.is_true(a.no_transaction_auto)
      assert.is_true(a.down_transaction) -- its down decides for itself
      assert.is_true(b.transaction)
      assert.is_false(b.down_transaction)
      assert.is_true(b.down_no_transaction_auto)
      assert.is_false(c.transaction)
      assert(fs.remove_tree(dir))
      set = assert(load({ ["V1__a.sql"] = "create index concurrently a on t (x);" }))
      assert.is_false(set.migrations[1].transaction)
      assert(fs.remove_tree(dir))
      local msg = refused({ ["1_a.up.sql"] = "create index concurrently a on t (x);\n" ..
        "alter table t add column y int;\n" })
      assert.matches("1_a.up.sql:1: CREATE INDEX CONCURRENTLY cannot run inside a transaction " ..
        "block, and this migration mixes it with statements that can (line 2)", msg, 1, true)
    end)

    it("asks for the layout's own marker where its tool needs one", function()
      local msg = refused({ ["1_a.sql"] = "-- +goose Up\ncreate index concurrently a on t (x);\n" })
      assert.matches("1_a.sql:2: CREATE INDEX CONCURRENTLY cannot run inside a transaction " ..
        "block; add `-- +goose NO TRANSACTION` to the file", msg, 1, true)
    end)
  end)

  describe("checksums", function()
    it("are SHA-256 of the text with the BOM stripped and CRLF read as LF", function()
      local lf = "create table t (\n  id int\n);\n"
      local crlf = "\239\187\191" .. lf:gsub("\n", "\r\n")
      local set = assert(load({ ["1_lf.sql"] = lf, ["2_crlf.sql"] = crlf }))
      local a, b = table.unpack(set.migrations)
      assert.equal(hash.sha256(lf), a.checksum)
      assert.equal(a.checksum, b.checksum)
      assert.equal(lf, b.up_sql)
      assert.equal(1, b.statements[1].line)
      assert.is_nil(b.statements[1].text:find("\r", 1, true))
    end)

    it("change when the text changes", function()
      local set = assert(load({ ["1_a.sql"] = "select 1;", ["2_b.sql"] = "select 2;" }))
      assert.are_not.equal(set.migrations[1].checksum, set.migrations[2].checksum)
    end)
  end)

  describe("the checksum cache", function()
    local cache, set_cache, racy

    before_each(function()
      cache = tmp .. "/cache/moonshift/m.cache"
      set_cache = tmp .. "/cache/moonshift/m.set"
      racy, cache_mod.RACY_SECONDS = cache_mod.RACY_SECONDS, -1 -- files written just now count as old
    end)

    after_each(function() cache_mod.RACY_SECONDS = racy end)

    -- Replaces the cached checksum of a file, as if the cache knew other content; removes
    -- the set cache, which would answer first.
    local function forge(name, checksum)
      local data = assert(fs.read(cache))
      local forged, n = data:gsub("(/" .. name:gsub("%p", "%%%0") .. "\t[^\t]*\t%a+ )%x+",
        "%1" .. checksum)
      assert.equal(1, n)
      assert(fs.write_atomic(cache, forged, tonumber("600", 8)))
      fs.remove(set_cache)
    end

    -- Replaces a checksum in the set cache.
    local function forge_set(old, new)
      local data = assert(fs.read(set_cache))
      local forged, n = data:gsub(old, new)
      assert.equal(1, n)
      assert(fs.write_atomic(set_cache, forged, tonumber("600", 8)))
    end

    it("is written private, and later loads take facts from it instead of the files", function()
      assert(load({ ["1_a.up.sql"] = "create table a (id int);\n",
        ["1_a.down.sql"] = "-- moonshift:no-transaction\ndrop table a;\n" },
        { cache = cache, lazy = true }))
      assert.equal(tonumber("600", 8), fs.stat(cache).mode)
      assert.equal(tonumber("700", 8), fs.stat(tmp .. "/cache/moonshift").mode)
      forge("1_a.up.sql", string.rep("0", 64))
      local a = assert(source.load(dir, { cache = cache, lazy = true })).migrations[1]
      assert.equal(string.rep("0", 64), a.checksum)
      assert.is_nil(rawget(a, "up_sql")) -- not read
      assert.is_true(a.transaction)
      assert.is_false(a.down_transaction)
      assert.equal(dir .. "/1_a.down.sql", a.down_path)
      -- preparing reads the file and refuses it, since it no longer matches what was loaded
      local ok, err = source.check(a)
      assert.is_nil(ok)
      assert.matches("1_a.up.sql changed while moonshift was reading it", err.message)
    end)

    it("keeps the sections and directives of a dbmate file", function()
      local text = "-- migrate:up transaction:false\nselect 1;\n-- migrate:down\nselect 2;\n"
      local first = assert(load({ ["2_b.sql"] = text }, { cache = cache, lazy = true }))
      local b = assert(source.load(dir, { cache = cache, lazy = true })).migrations[1]
      assert.is_nil(rawget(b, "up_sql"))
      assert.equal(first.migrations[1].checksum, b.checksum)
      assert.is_false(b.transaction)
      assert.equal(dir .. "/2_b.sql", b.down_path)
      assert.is_false(b.down_transaction)
      assert(source.check(b))
      assert.equal("select 1;\n", b.up_sql)
      assert.equal("select 2;\n", b.down_sql)
      assert.equal(4, b.down_statements[1].line)
    end)

    it("is not trusted for a file whose stat changed, nor when others can write it", function()
      assert(load({ ["1_a.up.sql"] = "select 1;\n" }, { cache = cache }))
      forge("1_a.up.sql", string.rep("0", 64))
      write_file(dir .. "/1_a.up.sql", "select 2;\n") -- same size, new ctime
      local set = assert(source.load(dir, { cache = cache }))
      assert.equal(hash.sha256("select 2;\n"), set.migrations[1].checksum)
      forge("1_a.up.sql", string.rep("0", 64))
      assert(fs.chmod(cache, tonumber("622", 8)))
      set = assert(source.load(dir, { cache = cache }))
      assert.equal(hash.sha256("select 2;\n"), set.migrations[1].checksum)
    end)

    it("leaves out files changed just before the load (racy timestamps)", function()
      cache_mod.RACY_SECONDS = 3600
      assert(load({ ["1_a.up.sql"] = "select 1;\n" }, { cache = cache, lazy = true }))
      assert.is_nil((fs.read(cache) or ""):find("1_a.up.sql", 1, true))
      assert.is_nil(fs.stat(set_cache))
    end)

    describe("of whole sets", function()
      local tree = {
        ["1_a.up.sql"] = "create table a (id int);\n",
        ["1_a.down.sql"] = "-- moonshift:no-transaction\ndrop table a;\n",
        ["2_b.sql"] = "-- moonshift:no-transaction\nselect 1;\n",
        ["3_c.up.sql"] = "select 3;\n",
        ["3_c.lua"] = "transaction = false\n",
        ["3_c.verify.sql"] = "select true;\n",
      }
      local trees = {
        native = tree,
        flyway = { ["V1__a.sql"] = "create table a (id int);\n", ["U1__a.sql"] = "drop table a;\n",
          ["V2__b.sql"] = "select 2;\n", ["V2__b.sql.conf"] = "executeInTransaction=false\n",
          ["R__view.sql"] = "create or replace view v as select 1;\n" },
        dbmate = { ["1_a.sql"] = "-- migrate:up\nselect 1;\n-- migrate:down\nselect 2;\n",
          ["2_b.sql"] = "-- migrate:up transaction:false\nselect 1;\n-- migrate:down\nselect 2;\n" },
        goose = { ["1_a.sql"] = "-- +goose NO TRANSACTION\n-- +goose Up\nselect 1;\n" ..
          "-- +goose Down\nselect 2;\n" },
        diesel = { ["2019-01-01-000000_a"] = { ["up.sql"] = "select 1;\n",
          ["down.sql"] = "select 2;\n", ["metadata.toml"] = "run_in_transaction = false\n" } },
      }
      local function companion(path)
        local env = {}
        assert(loadfile(path, "t", env))()
        return env
      end
      local opts
      before_each(function()
        opts = { cache = cache, lazy = true, load_companion = companion }
      end)

      for layout, files in pairs(trees) do
      it("answers a load of an unchanged directory with what the first load found: " ..
          layout, function()
        local first = assert(load(files, opts))
        assert.equal(layout, first.format)
        assert.equal(tonumber("600", 8), fs.stat(set_cache).mode)
        fs.remove(cache) -- so that nothing but the set cache can answer
        local again = assert(source.load(dir, opts))
        assert.equal(first.fingerprint, again.fingerprint)
        assert.equal(first.format, again.format)
        local fields = { "version", "key", "name", "id", "format", "up_path", "checksum",
          "transaction", "down_path", "down_transaction", "companion_path", "verify_path",
          "repeatable" }
        for _, list in ipairs({ "migrations", "repeatables" }) do
          assert.equal(#first[list], #again[list])
          for i, m in ipairs(first[list]) do
            for _, f in ipairs(fields) do assert.equal(m[f], again[list][i][f], f) end
            assert.is_nil(rawget(again[list][i], "up_sql")) -- not read
            assert(source.check(m))
            assert(source.check(again[list][i]))
            assert.same(m.statements, again[list][i].statements)
            assert.same(m.down_statements, again[list][i].down_statements)
          end
        end
        if layout == "native" then
          assert.equal(again.by_key["3"], again.migrations[3])
          -- the companion is loaded again, and still says transaction = false
          assert.is_false(again.migrations[3].transaction)
          assert.same({ transaction = false }, again.migrations[3].companion)
        end
      end)
      end

      it("is used only while the directory and the options stay the same", function()
        assert(load(tree, opts))
        local real = hash.sha256("select 3;\n")
        forge_set(real, string.rep("0", 64))
        -- the forged value shows the set cache answered
        assert.equal(string.rep("0", 64), assert(source.load(dir, opts)).by_key["3"].checksum)
        local other = { cache = cache, lazy = true, load_companion = companion,
          ignore = { "*.md" } }
        assert.equal(real, assert(source.load(dir, other)).by_key["3"].checksum)
        assert(source.load(dir, opts)) -- writes the set cache again, under these options
        forge_set(real, string.rep("0", 64))
        assert(fs.chmod(dir .. "/1_a.up.sql", tonumber("600", 8))) -- a new ctime, nothing else
        assert.equal(real, assert(source.load(dir, opts)).by_key["3"].checksum)
      end)

      it("keeps paths spelled as the directory was named", function()
        assert(load(tree, opts))
        assert(source.load(dir, opts)) -- from the set cache
        local other = tmp .. "/./migrations"
        assert.equal(other .. "/1_a.up.sql", assert(source.load(other, opts)).migrations[1].up_path)
        assert.equal(dir .. "/1_a.up.sql", assert(source.load(dir, opts)).migrations[1].up_path)
      end)

      it("is not written for a set changed just before the load", function()
        cache_mod.RACY_SECONDS = 3600
        assert(load(tree, opts))
        assert.is_nil(fs.stat(set_cache))
      end)

      it("refuses an entry a failing companion belongs to, as a fresh load does", function()
        assert(load(tree, opts))
        write_file(tmp .. "/broken.lua", "error('no')")
        local failing = { cache = cache, lazy = true, load_companion = function()
          return nil, "3_c.lua: no"
        end }
        local set, err = source.load(dir, failing)
        assert.is_nil(set)
        assert.matches("3_c.lua: no", err.message)
      end)

      it("removes an entry it cannot use and says so", function()
        assert(load(tree, opts))
        local data = assert(fs.read(set_cache))
        local damaged = data:gsub("\t0;native [^\n]*\n", "\t0;\n", 1)
        assert(fs.write_atomic(set_cache, damaged, tonumber("600", 8)))
        local m = assert(source.load(dir, opts)).migrations[1]
        local ok, err = source.check(m)
        assert.is_nil(ok)
        assert.matches("cache entry of .*1_a.up.sql was damaged and is now removed", err.message)
        assert.is_nil(fs.stat(set_cache))
      end)
    end)
  end)

  describe("unchanged", function()
    it("holds until a file of the set is added, removed, renamed or written", function()
      local set = assert(load({ ["2019-01-01-000000_a"] = { ["up.sql"] = "select 1;\n" },
        ["2019-01-02-000000_b"] = { ["up.sql"] = "select 2;\n" } }))
      assert.is_true(source.unchanged(set))
      write_file(dir .. "/2019-01-02-000000_b/down.sql", "select 3;\n")
      assert.is_false(source.unchanged(set))
      set = assert(source.load(dir))
      assert(fs.rename(dir .. "/2019-01-02-000000_b", dir .. "/2019-01-02-000000_c"))
      assert.is_false(source.unchanged(set))
      set = assert(source.load(dir))
      write_file(dir .. "/2019-01-01-000000_a/up.sql", "select 9;\n")
      assert.is_false(source.unchanged(set))
    end)
  end)

  describe("empty scripts", function()
    it("are allowed with no statements and a warning", function()
      local set = assert(load({
        ["1_empty.sql"] = "", ["2_blank.sql"] = "  \n\n", ["3_comments.sql"] = "-- nothing\n/* */\n",
      }))
      for _, m in ipairs(set.migrations) do assert.same({}, m.statements) end
      assert.equal(3, #set.warnings)
      assert.matches("1_empty.sql has no statements: it is recorded as applied, nothing is sent",
        set.warnings[1], 1, true)
    end)
  end)

  describe("ignored names", function()
    it("skips dot-files and the default patterns", function()
      local set = assert(load({
        ["1_a.sql"] = "select 1;", ["README"] = "x", ["README.rst"] = "x", ["notes.md"] = "x",
        ["notes.txt"] = "x", [".0009_hidden.sql"] = "\255", [".git"] = { x = "" },
      }))
      assert.same({ "1_a" }, ids(set.migrations))
    end)

    it("uses the given patterns instead of the defaults", function()
      local set = assert(load({ ["1_a.sql"] = "select 1;", ["x.bak"] = "", ["a1.orig"] = "" },
        { ignore = { "*.bak", "[a-c]?.orig" } }))
      assert.same({ "1_a" }, ids(set.migrations))
      local msg = refused({ ["notes.md"] = "x" }, { ignore = { "*.bak" } })
      assert.matches(dir .. "/notes.md matches no migration layout", msg, 1, true)
    end)

    it("applies inside diesel directories too", function()
      local set = assert(load({ ["2019-02-26-002946_a"] = { ["up.sql"] = "", ["README.md"] = "" } }))
      assert.equal(1, #set.migrations)
    end)
  end)

  describe("symlinks", function()
    it("follows a symlinked migrations directory and symlinked files", function()
      write_tree(tmp .. "/real", { ["0001_a.up.sql"] = "select 1;" })
      write_file(tmp .. "/elsewhere.sql", "select 2;")
      assert(fs.symlink(tmp .. "/elsewhere.sql", tmp .. "/real/0002_b.up.sql"))
      assert(fs.symlink(tmp .. "/real", dir))
      local set = assert(source.load(dir))
      assert.same({ "0001_a", "0002_b" }, ids(set.migrations))
      assert.equal("select 2;", set.migrations[2].up_sql)
      assert.equal(dir .. "/0002_b.up.sql", set.migrations[2].up_path)
      assert.equal(1, #set.warnings)
      assert.matches("0002_b.up.sql is a symlink to .*, outside", set.warnings[1])
    end)

    it("refuses a dangling link", function()
      write_tree(dir, { ["0001_a.sql"] = "select 1;" })
      assert(fs.symlink(tmp .. "/nowhere.sql", dir .. "/0002_b.sql"))
      local set, err = source.load(dir)
      assert.is_nil(set)
      assert.equal("dangling symlink: " .. dir .. "/0002_b.sql -> " .. tmp ..
        "/nowhere.sql (the target does not exist)", err.message)
      assert.equal(dir .. "/0002_b.sql", err.file)
    end)

    it("refuses a dangling migrations directory link", function()
      assert(fs.symlink(tmp .. "/nowhere", dir))
      local set, err = source.load(dir)
      assert.is_nil(set)
      assert.matches("dangling symlink: " .. dir, err.message, 1, true)
    end)

    it("refuses a link loop", function()
      write_tree(dir, {})
      assert(fs.symlink(dir .. "/0002_b.sql", dir .. "/0001_a.sql"))
      assert(fs.symlink(dir .. "/0001_a.sql", dir .. "/0002_b.sql"))
      local set, err = source.load(dir)
      assert.is_nil(set)
      assert.matches("symlink loop: " .. dir .. "/0001_a.sql", err.message, 1, true)
    end)

    it("refuses the same file reached twice", function()
      write_tree(dir, { ["0005_a.sql"] = "select 1;" })
      assert(fs.symlink(dir .. "/0005_a.sql", dir .. "/0006_b.sql"))
      local set, err = source.load(dir)
      assert.is_nil(set)
      assert.matches(dir .. "/0005_a.sql and " .. dir .. "/0006_b.sql are the same file",
        err.message, 1, true)
      assert.same({ dir .. "/0005_a.sql", dir .. "/0006_b.sql" }, err.files)
    end)
  end)

  describe("refusals", function()
    it("refuses a missing directory", function()
      local set, err = source.load(tmp .. "/nope")
      assert.is_nil(set)
      assert.equal("usage", err.kind)
      assert.equal("migrations directory not found: " .. tmp .. "/nope", tostring(err))
    end)

    it("refuses duplicate versions, naming both files", function()
      local msg, err = refused({ ["0003_a.up.sql"] = "select 1;", ["3_b.up.sql"] = "select 2;" })
      assert.equal("duplicate version 3: " .. dir .. "/0003_a.up.sql and " .. dir ..
        "/3_b.up.sql", msg)
      assert.same({ dir .. "/0003_a.up.sql", dir .. "/3_b.up.sql" }, err.files)
      msg = refused({ ["0005_a.sql"] = "select 1;", ["0005_b.sql"] = "select 2;" })
      assert.matches("duplicate version 5", msg, 1, true)
    end)

    it("refuses a lone file and an up file with one name", function()
      local msg = refused({ ["0003_a.sql"] = "select 1;", ["0003_a.up.sql"] = "select 1;" })
      assert.matches("duplicate version 3", msg, 1, true)
    end)

    it("refuses a down script without its up script", function()
      local msg, err = refused({ ["0001_a.up.sql"] = "select 1;", ["0002_b.down.sql"] = "x" })
      assert.equal(dir .. "/0002_b.down.sql is a down script without an up script (0002_b.up.sql)", msg)
      assert.equal(dir .. "/0002_b.down.sql", err.file)
      msg = refused({ ["0001_a.up.sql"] = "select 1;", ["0001_b.down.sql"] = "x" })
      assert.matches("0001_b.down.sql is a down script without an up script", msg, 1, true)
    end)

    it("refuses names that match no layout, listing every one", function()
      local bad = { "V1_init.sql", "0007-add.SQL", "0008_.sql", "0010_x.sql~", "init.sql",
        "0011_x.up.sql.orig" }
      for _, name in ipairs(bad) do
        local msg, err = refused({ ["0001_ok.sql"] = "select 1;", [name] = "select 1;" })
        assert.equal(dir .. "/" .. name, err.file)
        assert.matches(dir .. "/" .. name .. " matches no migration layout", msg, 1, true)
        assert(fs.remove_tree(dir))
      end
      local tree = {}
      for _, name in ipairs(bad) do tree[name] = "" end
      local msg, err = refused(tree)
      assert.equal(1, msg:find("6 problems with the migrations in " .. dir .. ":\n", 1, true))
      assert.equal(6, #err.files)
    end)

    it("refuses a directory that is not a diesel migration", function()
      local msg = refused({ ["0001_a.sql"] = "select 1;", archive = { ["x.sql"] = "" } })
      assert.matches(dir .. "/archive is a directory that matches no migration layout", msg, 1,
        true)
    end)

    it("refuses a companion without a migration", function()
      local msg, err = refused({ ["0001_a.sql"] = "select 1;", ["0002_b.lua"] = "return {}" })
      assert.equal(dir .. "/0002_b.lua belongs to no migration (no migration named 0002_b)", msg)
      assert.equal(dir .. "/0002_b.lua", err.file)
    end)

    it("refuses a mix of layouts, naming one file of each", function()
      local msg, err = refused({
        ["0001_a.up.sql"] = "select 1;", ["0002_b.up.sql"] = "select 1;", ["V3__c.sql"] = "x",
      })
      assert.equal(dir .. " mixes migration layouts: " .. dir .. "/0001_a.up.sql is native, " ..
        dir .. "/V3__c.sql is flyway; keep one layout per directory", msg)
      assert.same({ dir .. "/0001_a.up.sql", dir .. "/V3__c.sql" }, err.files)
      assert(fs.remove_tree(dir))
      msg = refused({ ["1_a.sql"] = "-- migrate:up\nselect 1;", ["2_b.sql"] = "select 2;" })
      assert.matches("1_a.sql is dbmate, .*2_b.sql is native", msg)
    end)

    it("refuses files of another layout than the format asked for", function()
      local msg = refused({ ["V1__a.sql"] = "select 1;" }, { format = "native" })
      assert.matches(dir .. "/V1__a.sql is a flyway migration, but the format is set to native",
        msg, 1, true)
      assert(fs.remove_tree(dir))
      msg = refused({ ["1_a.sql"] = "-- migrate:up\nselect 1;" }, { format = "native" })
      assert.matches("1_a.sql is a dbmate migration", msg, 1, true)
    end)

    it("refuses a file that is not UTF-8, giving the byte offset", function()
      local msg, err = refused({ ["1_a.sql"] = "insert into c values ('\214sterreich');" })
      assert.equal(dir .. "/1_a.sql: not valid UTF-8 at byte offset 23 (line 1, byte 0xD6); " ..
        "save the file as UTF-8", msg)
      assert.equal(dir .. "/1_a.sql", err.file)
      msg = refused({ ["1_a.sql"] = "select 1;\nselect '\255';" })
      assert.matches("not valid UTF-8 at byte offset 18 (line 2", msg, 1, true)
    end)

    it("refuses a file with a NUL byte, giving the byte offset", function()
      local msg = refused({ ["1_a.sql"] = "select 1;\nselect '\0';" })
      assert.equal(dir .. "/1_a.sql: NUL byte at byte offset 18 (line 2); migrations must be " ..
        "UTF-8 text", msg)
    end)

    it("refuses a down script that is not UTF-8", function()
      local msg = refused({ ["1_a.up.sql"] = "select 1;", ["1_a.down.sql"] = "\192" })
      assert.matches(dir .. "/1_a.down.sql: not valid UTF-8 at byte offset 0", msg, 1, true)
    end)

    it("refuses psql meta-commands with file and line", function()
      local msg, err = refused({
        ["0003_x.up.sql"] = "create table a (id int);\n\n\n\n\n\n\\i other.sql\nselect 1;\n",
      })
      assert.equal(dir .. "/0003_x.up.sql:7: psql meta-command \\i cannot run on the server", msg)
      assert.equal(dir .. "/0003_x.up.sql", err.file)
    end)

    it("refuses an unterminated token with file and line", function()
      local msg = refused({ ["0003_x.sql"] = "select 1;\nselect 'oops;\n" })
      assert.equal(1, msg:find(dir .. "/0003_x.sql:2: ", 1, true))
      assert.matches("unterminated", msg, 1, true)
    end)

    it("gives dbmate lines in the file, not the section", function()
      local msg = refused({ ["1_a.sql"] = "-- migrate:up\nselect 1;\n\\set x 1\n" })
      assert.matches("1_a.sql:3: psql meta-command \\set", msg, 1, true)
    end)

    it("refuses statements that cannot run in a transaction", function()
      local cases = {
        { "create index concurrently i on t (x);", "CREATE INDEX CONCURRENTLY" },
        { "CREATE UNIQUE INDEX CONCURRENTLY i ON t (x);", "CREATE INDEX CONCURRENTLY" },
        { "drop index concurrently i;", "DROP INDEX CONCURRENTLY" },
        { "reindex index concurrently i;", "REINDEX CONCURRENTLY" },
        { "REINDEX (VERBOSE) TABLE CONCURRENTLY t;", "REINDEX CONCURRENTLY" },
        { "reindex database app;", "REINDEX DATABASE" },
        { "vacuum analyze t;", "VACUUM" },
        { "VACUUM;", "VACUUM" },
        { "create database other;", "CREATE DATABASE" },
        { "alter system set work_mem = '8MB';", "ALTER SYSTEM" },
      }
      for _, case in ipairs(cases) do
        local msg = refused({ ["0003_x.up.sql"] = "select 1;\n" .. case[1] .. "\n" })
        assert.equal(dir .. "/0003_x.up.sql:2: " .. case[2] .. " cannot run inside a " ..
          "transaction block, and this migration mixes it with statements that can (line 1); " ..
          "move it to a migration of its own (which then runs without a transaction), or add " ..
          "`-- moonshift:no-transaction` to the file to run them all without a transaction", msg)
        assert(fs.remove_tree(dir))
      end
    end)

    it("finds them after leading comments, on the keyword's line", function()
      local msg = refused({
        ["0003_x.up.sql"] = "select 1;\n-- build it\n/* online\n /* nested */ */\n" ..
          "  Create\n  Index   Concurrently i on t (x);\n",
      })
      assert.matches("0003_x.up.sql:5: CREATE INDEX CONCURRENTLY", msg, 1, true)
    end)

    it("checks the down script too", function()
      local msg = refused({ ["1_a.up.sql"] = "select 1;", ["1_a.down.sql"] = "select 1;\nvacuum;" })
      assert.matches("1_a.down.sql:2: VACUUM cannot run inside a transaction", msg, 1, true)
    end)

    it("allows them in a non-transactional migration, and lookalikes anywhere", function()
      local set = assert(load({
        ["1_a.sql"] = "-- moonshift:no-transaction\ncreate index concurrently i on t (x);\n",
        ["2_b.sql"] = "create index concurrently_named on t (x);\n" ..
          "select 'vacuum';\ncomment on table t is 'create database';\n",
      }))
      assert.equal(2, #set.migrations)
    end)

    it("refuses a file over the size limit before reading it", function()
      local msg = refused({ ["1_a.sql"] = string.rep("x", 100) }, { max_file_size = 10 })
      assert.equal(dir .. "/1_a.sql is 100 bytes, over the limit of 10 bytes for one " ..
        "migration file", msg)
    end)

    it("streams a file over stream_size: same checksum, statements checked but not kept",
      function()
        local text = "create table t (x int);\n-- moonshift:no-transaction\n" ..
          string.rep("insert into t values (1);\n", 20)
        local whole = assert(load({ ["1_a.sql"] = text }))
        local set = assert(load({ ["1_a.sql"] = text }, { stream_size = 100 }))
        local m = set.migrations[1]
        assert.equal(whole.migrations[1].checksum, m.checksum)
        assert.is_false(m.transaction)
        assert.equal(21, #m.statements)
        assert.is_nil(m.statements[1])
        assert.equal(dir .. "/1_a.sql", m.statements.stream)
      end)

    it("reads a streamed file's BOM as a whole file's: directive on its first line, checksum",
      function()
        local text = "\239\187\191-- moonshift:no-transaction\n" ..
          string.rep("insert into t values (1);\n", 20)
        local whole = assert(load({ ["1_a.sql"] = text }))
        local set = assert(load({ ["1_a.sql"] = text }, { stream_size = 100 }))
        assert.is_false(whole.migrations[1].transaction)
        assert.is_false(set.migrations[1].transaction)
        assert.equal(whole.migrations[1].checksum, set.migrations[1].checksum)
        assert.equal(20, #set.migrations[1].statements)
      end)

    it("refuses what the checks refuse in a streamed file, with its line", function()
      local msg = refused({ ["1_a.sql"] = string.rep("select 1;\n", 20) .. "commit;\n" },
        { stream_size = 100 })
      assert.matches("1_a.sql:21: COMMIT", msg, 1, true)
      msg = refused({ ["1_a.sql"] = string.rep("select 1;\n", 20) .. "select '\255';\n" },
        { stream_size = 100 })
      assert.matches("1_a.sql: not valid UTF-8 at byte offset 208 (line 21, byte 0xFF)", msg, 1,
        true)
    end)

    it("streams a line longer than a read block, and refuses a NUL in one at once", function()
      local text = "select '" .. string.rep("y", 3 * 1024 * 1024) .. "';\nselect 2;\n"
      local whole = assert(load({ ["1_a.sql"] = text }))
      local set = assert(load({ ["1_a.sql"] = text }, { stream_size = 100 }))
      assert.equal(whole.migrations[1].checksum, set.migrations[1].checksum)
      assert.equal(2, #set.migrations[1].statements)
      local msg = refused({ ["1_a.sql"] = "select '" .. string.rep("y", 2 * 1024 * 1024) ..
        "\0';\n" }, { stream_size = 100 })
      assert.matches("1_a.sql: NUL byte at byte offset 2097160 (line 1)", msg, 1, true)
    end)

    it("reads a large file with CRLF line endings whole, within max_file_size", function()
      local text = string.rep("select 1;\r\n", 20)
      local set = assert(load({ ["1_a.sql"] = text }, { stream_size = 100 }))
      assert.equal(20, #set.migrations[1].statements)
      assert.equal("select 1;", set.migrations[1].statements[1].text)
      local msg = refused({ ["1_a.sql"] = text }, { stream_size = 100, max_file_size = 200 })
      assert.equal(dir .. "/1_a.sql is 220 bytes, over the limit of 200 bytes for one " ..
        "migration file read whole (it is not streamed: it has CRLF line endings, or dbmate " ..
        "or goose sections)", msg)
    end)

    it("raises on misuse", function()
      assert.has_error(function() source.load(nil) end)
      assert.has_error(function() source.load(dir, { format = "liquibase" }) end)
      assert.has_error(function() source.load(dir, { ignore = { 1 } }) end)
    end)
  end)

  describe("the harbor corpus", function()
    it("reads 39 migrations, 0001 to 0190, all transactional", function()
      local corpus, missing = helpers.corpus("harbor") -- raises with CI=true
      if not corpus then return pending(missing) end
      local set = assert(source.load(corpus))
      assert.equal("native", set.format)
      assert.equal(39, #set.migrations)
      assert.equal("0001", set.migrations[1].version)
      assert.equal("0190", set.migrations[39].version)
      for i, m in ipairs(set.migrations) do
        assert.is_true(m.transaction, m.id)
        assert.is_true(#m.statements > 0, m.id)
        if i > 1 then
          assert.is_true(tonumber(set.migrations[i - 1].version) < tonumber(m.version))
        end
      end
    end)
  end)
end)
