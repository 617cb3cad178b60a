-- The event stream a pipeline reads (--log-format json): the run log's events, header
-- first, run_id on every one, and a last run_finished for every run, whatever happened.
local cjson = require("cjson")
local fs = require("moonshift.fs")
local helpers = require("spec.helpers")

local function lines(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
  return out
end

describe("the event stream #e2e", function()
  local db = helpers.database({ files = {
    ["migrations/0001_a.up.sql"] = "CREATE TABLE a (id int);\n",
    ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id int);\n",
  } })

  it("carries the run log's events, header first, run_id on each, run_finished last", function()
    local res = helpers.ms({ "up", "-y", "--log-format", "json" })
    assert.are.equal(0, res.code, res.stderr)
    local events = lines(res.stdout)
    local head, last = events[1], events[#events]
    assert.are.equal("run_start", head.event)
    assert.are.equal(64, #head.plan[1].sha256)
    assert.are.equal("0002", head.to)
    assert.is_truthy(fs.exists(head.log))
    for _, e in ipairs(events) do assert.are.equal(head.run_id, e.run_id, e.event) end
    assert.are.equal("run_finished", last.event)
    assert.are.same({ 0, 2, "0002", true }, { last.exit_code, last.applied, last.current, last.ok })
    helpers.validate_json("event", assert(fs.read(head.log))) -- the run log's lines too
    local logged = {}
    for line in assert(fs.read(head.log)):gmatch("[^\n]+") do
      logged[#logged + 1] = cjson.decode(line).event
    end
    local shown = {}
    for i = 1, #logged do shown[i] = events[i].event end
    assert.are.same(logged, shown) -- the log's events, in its order, then run_finished
  end)

  it("says nothing to do, and a refusal with its exit code and reason", function()
    assert.are.equal(0, helpers.ms({ "up", "-y" }).code)
    local res = helpers.ms({ "up", "-y", "--log-format", "json" })
    assert.are.equal(0, res.code, res.stderr)
    local events = lines(res.stdout)
    assert.are.equal(1, #events)
    local e = events[1]
    assert.are.same({ "run_finished", 0, 0, true, "0002" },
      { e.event, e.exit_code, e.applied, e.nothing, e.current })
    assert.matches("^%d+T%d+Z%-%x+$", e.run_id)
    helpers.write_files(db.dir, { ["migrations/0002_b.up.sql"] = "CREATE TABLE b (id bigint);\n" })
    res = helpers.ms({ "up", "-y", "--log-format", "json" })
    assert.are.equal(9, res.code)
    e = lines(res.stdout)[1]
    assert.are.same({ "run_finished", 9, "refused", false },
      { e.event, e.exit_code, e.kind, e.ok })
    assert.matches("changed on disk since they ran: 0002_b", e.message)
  end)
end)
