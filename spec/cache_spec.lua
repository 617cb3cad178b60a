-- The checksum caches behind their small interface: look up, store, forget.
local cache = require("moonshift.cache")
local fs = require("moonshift.fs")
local helpers = require("spec.helpers")

local FACTS = { layout = "native", checksum = "ab12", up_offset = 0, down_offset = 3,
  has_down = true, directive = true }

describe("cache", function()
  local dir, racy

  before_each(function()
    dir = helpers.tmpdir()
    racy = cache.RACY_SECONDS
  end)
  after_each(function()
    cache.RACY_SECONDS = racy
    helpers.rmdir(dir)
  end)

  local function file(name, text)
    local path = dir .. "/" .. name
    assert(fs.write_atomic(path, text, tonumber("644", 8)))
    return path, assert(fs.stat(path))
  end

  it("encodes a script's facts on one line and reads them back", function()
    local line = cache.encode_facts(FACTS)
    assert.are.equal("native ab12 10010000 0 3", line)
    local back = cache.decode_facts(line)
    assert.is_true(back.has_down and back.directive)
    assert.is_false(back.goose)
    assert.is_nil(cache.decode_facts("native ab12 100100 0 3")) -- a flag missing: damaged
  end)

  describe("per file", function()
    it("answers for a file whose stat is unchanged, and not once it changed", function()
      cache.RACY_SECONDS = -1
      local path, st = file("a.sql", "select 1;\n")
      local files = cache.files(dir .. "/c/m.cache", fs.now())
      assert.is_nil(files:lookup(path, st))
      files:store(path, st, FACTS)
      files:save()
      assert.are.equal(tonumber("600", 8), fs.stat(dir .. "/c/m.cache").mode)
      assert.are.equal(tonumber("700", 8), fs.stat(dir .. "/c").mode)
      local again = cache.files(dir .. "/c/m.cache", fs.now())
      assert.are.same(cache.decode_facts(cache.encode_facts(FACTS)), again:lookup(path, st))
      local _, changed = file("a.sql", "select 22;\n")
      assert.is_nil(cache.files(dir .. "/c/m.cache", fs.now()):lookup(path, changed))
    end)

    it("keeps nothing for a file changed too recently to trust its stat", function()
      local path, st = file("a.sql", "select 1;\n")
      local files = cache.files(dir .. "/m.cache", fs.now())
      files:store(path, st, FACTS)
      files:save()
      assert.is_nil(cache.files(dir .. "/m.cache", fs.now()):lookup(path, st))
    end)

    it("never answers from a file other users may write", function()
      cache.RACY_SECONDS = -1
      local path, st = file("a.sql", "select 1;\n")
      local files = cache.files(dir .. "/m.cache", fs.now())
      files:store(path, st, FACTS)
      files:save()
      assert(fs.chmod(dir .. "/m.cache", tonumber("622", 8)))
      assert.is_nil(cache.files(dir .. "/m.cache", fs.now()):lookup(path, st))
    end)

    it("without a path, never answers and writes nothing", function()
      local path, st = file("a.sql", "select 1;\n")
      local files = cache.files(nil, fs.now())
      files:store(path, st, FACTS)
      files:save()
      assert.is_nil(files:lookup(path, st))
      assert.are.same({ "a.sql" }, fs.list(dir))
    end)
  end)

  describe("whole set", function()
    local RECORD = { version = "1", key = "1", name = "a", id = "1_a", format = "native",
      up_path = "/m/1_a.up.sql", checksum = "ab12", flags = "t", source = "0;native 0 0 0" }

    it("gives back what it kept, under the key it was kept under", function()
      local sets = cache.sets(dir .. "/m.set")
      sets:store("beef", "native", { "a warning" }, { RECORD })
      local kept = assert(cache.sets(dir .. "/m.set"):lookup())
      assert.are.equal("beef", kept.key)
      assert.are.equal("native", kept.format)
      assert.are.same({ "a warning" }, kept.warnings)
      assert.are.equal("1_a", kept.records[1].id)
      assert.are.equal("t", kept.records[1].flags)
      assert.is_nil(kept.records[1].down_path) -- an empty field reads back as absent
    end)

    it("keeps nothing when a value holds a tab or a line break", function()
      local bad = {}
      for k, v in pairs(RECORD) do bad[k] = v end
      bad.name = "a\tb"
      cache.sets(dir .. "/m.set"):store("beef", "native", {}, { bad })
      assert.is_nil(cache.sets(dir .. "/m.set"):lookup())
    end)

    it("misses a cache written with another record format", function()
      cache.sets(dir .. "/m.set"):store("beef", "native", {}, { RECORD })
      local data = assert(fs.read(dir .. "/m.set"))
      local older = data:gsub("^moonshift set cache 3 [^\t]*", "moonshift set cache 2")
      assert(fs.write_atomic(dir .. "/m.set", older, tonumber("600", 8)))
      assert.is_nil(cache.sets(dir .. "/m.set"):lookup())
    end)

    it("forgets what it kept", function()
      local sets = cache.sets(dir .. "/m.set")
      sets:store("beef", "native", {}, { RECORD })
      sets:forget()
      assert.is_nil(sets:lookup())
      assert.is_false(fs.exists(dir .. "/m.set"))
    end)
  end)
end)
