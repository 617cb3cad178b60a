-- The words people already type: current/version, help, --env-file, and a "did you mean"
-- for other tools' spellings; JSON with null where nothing is applied.
local cjson = require("cjson")
local helpers = require("spec.helpers")

describe("the words people type #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
    ["migrations/0001_a.down.sql"] = "DROP TABLE a;\n",
    ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id int);\n",
  } })

  it("current (and version) print the version, with null in JSON when nothing is applied",
    function()
    local res = helpers.ms({ "current" })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal("nothing applied\n", res.stdout)
    res = helpers.ms({ "version", "--json" })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal('{"current":null,"current_id":null,"dirty":null}\n', res.stdout)
    local st = cjson.decode(helpers.ms({ "status", "--json" }).stdout)
    assert.are.equal(cjson.null, st.current)
    assert.are.equal(2, st.pending_count)
    assert.are.equal(0, helpers.ms({ "up", "-y", "--to", "1" }).code)
    res = helpers.ms({ "current" })
    assert.are.equal("0001_a\n", res.stdout)
    local raw = helpers.ms({ "status", "--json" }).stdout
    assert.is_nil(raw:find("\\/", 1, true)) -- paths with plain slashes
    assert.matches('"path":"[^"]*/migrations/0002_b.up.sql"', raw)
  end)

  it("help lists every command and the shared options; help COMMAND shows that command",
    function()
    local res = helpers.run({ "help" })
    assert.are.equal(0, res.code, res.stderr)
    for _, name in ipairs({ "status", "current", "restore", "accept", "--env-file",
      "--lock-wait" }) do
      assert.is_truthy(res.stdout:find(name, 1, true), name)
    end
    res = helpers.run({ "help", "down" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("Usage: moonshift down", res.stdout)
    assert.matches("%-%-allow%-empty%-down", res.stdout)
    for _, cmd in ipairs({ "do", "script" }) do
      res = helpers.run({ cmd, "--help" })
      assert.are.equal(0, res.code, res.stderr)
      assert.matches("Usage: moonshift " .. cmd, res.stdout)
    end
    res = helpers.run({ "help", "nope" })
    assert.are.equal(2, res.code)
    assert.matches('no command "nope"', res.stderr)
  end)

  it("reads --env-file, relative to where it is run, on every command", function()
    helpers.write_files(db.dir, { ["deploy/.env.production"] = "DATABASE_URL=" .. db.uri .. "\n" })
    local res = helpers.run({ "--env-file", "deploy/.env.production", "up", "-y" },
      { cwd = db.dir })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal("b", helpers.value(db.uri, "SELECT to_regclass('b')::text"))
    res = helpers.run({ "status", "--env-file", "nope.env" }, { cwd = db.dir })
    assert.are.equal(2, res.code)
    assert.matches("env file not found: nope%.env", res.stderr)
  end)

  it("answers another tool's spelling with the moonshift command, and the command's usage",
    function()
    for argv, hint in pairs({ ["upgrade"] = "moonshift up", ["downgrade"] = "moonshift down",
      ["down -1"] = "moonshift down 1", ["create -seq add_users"] = "moonshift new NAME" }) do
      local args = {}
      for w in argv:gmatch("%S+") do args[#args + 1] = w end
      local res = helpers.ms(args)
      assert.are.equal(2, res.code, argv)
      assert.matches("did you mean: " .. hint:gsub("%p", "%%%0"), res.stderr, nil, argv)
    end
    local res = helpers.ms({ "down", "-1" })
    assert.matches("Usage: moonshift down", res.stderr)
  end)

  it("takes head and base as targets, and down base for down --all", function()
    helpers.write_files(db.dir, { ["migrations/0002_b.down.sql"] = "DROP TABLE b;\n" })
    local res = helpers.ms({ "up", "-y", "--to", "head" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("applied 2 migrations", res.stdout)
    res = helpers.ms({ "down", "-y", "base" })
    assert.are.equal(0, res.code, res.stderr)
    assert.matches("reverted 2 migrations", res.stdout)
    assert.are.equal(0, helpers.ms({ "goto", "-y", "head" }).code)
    assert.are.equal(2, helpers.value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    res = helpers.ms({ "goto", "-y", "base" })
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal(0, helpers.value(db.uri, "SELECT count(*) FROM moonshift_migrations"))
    res = helpers.ms({ "stamp", "-y", "base" })
    assert.are.equal(2, res.code)
    assert.matches("base %(before every migration%) is not a target here", res.stderr)
  end)

  it("completes commands and options in bash, from the parser", function()
    local proc = require("moonshift.proc")
    local script = "source <(\"$0\" --completion bash); COMP_WORDS=(moonshift re); " ..
      "COMP_CWORD=1; _moonshift; echo \"${COMPREPLY[*]}\"; COMP_WORDS=(moonshift down --allow); " ..
      "COMP_CWORD=2; _moonshift; echo \"${COMPREPLY[*]}\""
    local res = assert(proc.run({ "/bin/bash", "-c", script, helpers.bin() },
      { env = helpers.env() }))
    assert.are.equal(0, res.code, res.stderr)
    assert.are.equal("redo restore reset\n--allow-empty-down\n", res.stdout)
    local zsh = helpers.run({ "--completion", "zsh" })
    assert.are.equal(0, zsh.code)
    assert.matches("#compdef moonshift", zsh.stdout)
  end)
end)
