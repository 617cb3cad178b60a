-- config: durations, migrate.lua discovery and validation, and where the database comes from.
local config = require("moonshift.config")
local ui = require("moonshift.ui")
local proc = require("moonshift.proc")
local helpers = require("spec.helpers")

describe("config", function()
  it("parses durations", function()
    assert.are.equal(500, ui.parse_duration("500ms"))
    assert.are.equal(5000, ui.parse_duration("5s"))
    assert.are.equal(120000, ui.parse_duration("2min"))
    assert.are.equal(3000, ui.parse_duration(3))
    local none, err = ui.parse_duration("soon")
    assert.is_nil(none)
    assert.matches("invalid duration", err)
  end)

  it("loads migrate.lua given with -c, resolving paths beside it", function()
    local dir = helpers.tmpdir()
    local unset = "MOONSHIFT_SPEC_UNSET_" .. proc.getpid()
    helpers.write_files(dir, { ["migrate.lua"] =
      "return { migrations = 'db/migrations', lock_timeout = '3s', database = env('" .. unset ..
      "', 'postgresql:///dflt') }\n" })
    local cfg = assert(config.load({ config = dir .. "/migrate.lua" }))
    helpers.rmdir(dir)
    assert.matches("/db/migrations$", cfg.migrations)
    assert.are.equal(3000, cfg.lock_timeout_ms)
    -- env() in migrate.lua gives its default for an unset variable; the file's database is
    -- used unless MOONSHIFT_DATABASE_URL or DATABASE_URL (which win) are set around the specs
    local outer = os.getenv("MOONSHIFT_DATABASE_URL") and "MOONSHIFT_DATABASE_URL" or
      os.getenv("DATABASE_URL") and "DATABASE_URL"
    assert.are.equal(outer and os.getenv(outer) or "postgresql:///dflt", cfg.database)
    assert.are.equal(outer or "migrate.lua", cfg.database_source)
  end)

  it("reads .env quotes, and names the file and line of one left open, not its value",
    function()
      local dir = helpers.tmpdir()
      local k = "MOONSHIFT_SPEC_DOTENV_" .. proc.getpid()
      helpers.write_files(dir, { ["migrate.lua"] = "return { env_file = 'more.env' }\n",
        [".env"] = k .. "_A=\"quoted\" # a comment\nexport " .. k .. "_B='it\"s'\n",
        ["more.env"] = "# more\n" .. k .. "_C=\"zqxv\n" .. "tail\"\n" })
      local cfg, err = config.load({ config = dir .. "/migrate.lua" })
      assert.is_nil(cfg)
      assert.are.equal("usage", err.kind)
      assert.matches("more%.env:2: the value of " .. k .. "_C opens a quote", tostring(err))
      assert.is_nil(tostring(err):find("zqxv", 1, true))
      helpers.write_files(dir, { ["more.env"] = k .. "_C=plain\n" })
      cfg = assert(config.load({ config = dir .. "/migrate.lua" }))
      helpers.rmdir(dir)
      assert.are.equal("quoted", cfg.env(k .. "_A"))
      assert.are.equal('it"s', cfg.env(k .. "_B"))
      assert.are.equal("plain", cfg.env(k .. "_C"))
    end)

  it("rejects unknown keys, wrong types and over-long names", function()
    local dir = helpers.tmpdir()
    local function load(text)
      helpers.write_files(dir, { ["migrate.lua"] = text })
      return config.load({ config = dir .. "/migrate.lua" })
    end
    local _, err = load("return { tabel = 'x' }")
    assert.matches("unknown key \"tabel\"", err.message)
    _, err = load("return { lock_retries = 'many' }")
    assert.matches("lock_retries must be a number", err.message)
    _, err = load("return { table = string.rep('x', 64) }")
    assert.matches("1 to 63 bytes", err.message)
    _, err = load("return { lock = 'row' }")
    assert.matches("lock must be", err.message)
    _, err = load("return { compat = 'liquibase' }")
    assert.matches('compat must be one of "golang%-migrate", "dbmate", "flyway", "diesel", ' ..
      '"goose", "sql%-migrate", "node%-pg%-migrate", not "liquibase"', err.message)
    assert.are.equal("flyway", assert(load("return { compat = 'flyway' }")).compat)
    _, err = load("return 42")
    assert.matches("must return a table", err.message)
    local cfg
    cfg, err = load("os.execute('true') return {}")
    assert.matches("cannot load", err.message)
    helpers.rmdir(dir)
    assert.is_nil(cfg)
  end)
end)
