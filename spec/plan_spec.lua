-- plan: what status reports and what up/down would run, from files and history rows.
local plan = require("moonshift.plan")

local function m(v, checksum, extra)
  local x = { version = v, key = tostring(tonumber(v)), id = v .. "_m", checksum = checksum or "c" .. v,
    down_path = "/x/" .. v .. "_m.down.sql", format = "native", up_path = "/x/" .. v .. "_m.up.sql",
    down_statements = { { kind = "sql", text = "SELECT 1" } } }
  for k, val in pairs(extra or {}) do x[k] = val end
  return x
end

local function set_of(list)
  local by_key = {}
  for _, x in ipairs(list) do by_key[x.key] = x end
  return { migrations = list, by_key = by_key, repeatables = {}, dir = "/x" }
end

local function hist(rows)
  for _, r in ipairs(rows) do
    r.state = r.state or "applied"
    r.kind = r.kind or "versioned"
  end
  return { list = rows }
end

describe("plan", function()
  it("sorts migrations into applied and pending and knows the current one", function()
    local s = set_of({ m("0001"), m("0002"), m("0003") })
    local st = plan.status(s, hist({ { version = "0001", checksum = "c0001" },
      { version = "2", checksum = "c0002" } }))
    assert.are.equal(2, #st.applied)
    assert.are.equal("0002", st.current.version)
    assert.are.equal(1, #st.pending)
    assert.are.equal("0003", st.pending[1].version)
    assert.is_true(plan.check_runnable(st, {}))
  end)

  it("finds drift, missing files, dirty rows and out-of-order pending ones", function()
    local s = set_of({ m("0001"), m("0002"), m("0003"), m("0004") })
    local st = plan.status(s, hist({
      { version = "0001", checksum = "changed" },
      { version = "0003", checksum = "c0003" },
      { version = "0004", checksum = "c0004", state = "dirty", applied_at = "t" },
      { version = "0009", checksum = "x", name = "0009_gone" },
    }))
    assert.are.equal("0001", st.drift[1].migration.version)
    assert.are.equal("0009_gone", st.missing[1].name)
    assert.are.equal("0004", st.dirty[1].migration.version)
    assert.are.equal("0002", st.out_of_order[1].version)
    local ok, err = plan.check_runnable(st, {})
    assert.is_nil(ok)
    assert.are.equal("refused", err.kind)
    assert.matches("0004_m is dirty", err.message)
  end)

  it("plans up to a version and down by count or target, refusing a missing down", function()
    local s = set_of({ m("1"), m("2"), m("3", nil, { down_path = false }) })
    s.migrations[3].down_path = nil
    local st = plan.status(s, hist({}))
    assert.are.equal(2, #plan.up(st, s.migrations[2]))
    st = plan.status(s, hist({ { version = "1", checksum = "c1" }, { version = "2", checksum = "c2" },
      { version = "3", checksum = "c3" } }))
    local list, err = plan.down(st, 1)
    assert.is_nil(list)
    assert.matches("3_m has no down script", err.message)
    list = plan.down(st, 5, s.migrations[1])
    assert.is_nil(list)
    s.migrations[3].down_path = "/x/3_m.down.sql"
    list = assert(plan.down(st, 5, s.migrations[1]))
    assert.are.same({ "3", "2" }, { list[1].version, list[2].version })
    s.migrations[3].down_statements = {}
    list, err = plan.down(st, 1)
    assert.is_nil(list)
    assert.matches("3_m.down.sql holds no statements", err.message)
    assert.are.equal("3", assert(plan.down(st, 1, nil, true))[1].version)
  end)

  it("runs down in the reverse of the running order, and calls pending ones out of order " ..
    "only when one after them in that order is applied", function()
    local s = set_of({ m("1"), m("3"), m("2") }) -- 2 requires 3
    local st = plan.status(s, hist({ { version = "1", checksum = "c1" },
      { version = "3", checksum = "c3" } }))
    assert.are.same({}, st.out_of_order)
    st = plan.status(s, hist({ { version = "1", checksum = "c1" }, { version = "2", checksum = "c2" },
      { version = "3", checksum = "c3" } }))
    local list = assert(plan.down(st, 2))
    assert.are.same({ "2", "3" }, { list[1].version, list[2].version })
  end)

  it("finds a migration by any spelling of its version, or says none exists", function()
    local s = set_of({ m("0007") })
    assert.are.equal("0007", plan.find(s, "7").version)
    local none, err = plan.find(s, "8")
    assert.is_nil(none)
    assert.are.equal("usage", err.kind)
  end)
end)
