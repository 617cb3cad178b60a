-- Specs for moonshift.records, the reader of the caches' tab-separated lines.
local records = require("moonshift.records")

describe("moonshift.records", function()
  local fields = { "a", "b", "c" }

  it("reads lines into tables, leaving out empty values", function()
    local list, after = records.parse("x\ty\tz\n\t\tw\n", 1, fields)
    assert.same({ { a = "x", b = "y", c = "z" }, { c = "w" } }, list)
    assert.equal(11, after)
  end)

  it("starts at init and stops after an empty line", function()
    local data = "head\n1\t2\t3\n\nrest\n"
    local list, after = records.parse(data, 6, fields)
    assert.same({ { a = "1", b = "2", c = "3" } }, list)
    assert.equal("rest\n", data:sub(after))
  end)

  it("reads nothing at the end of the data", function()
    local list, after = records.parse("", 1, fields)
    assert.same({}, list)
    assert.equal(1, after)
  end)

  it("refuses a line with another count of values, or without its newline", function()
    assert.same({ nil, 2 }, { records.parse("1\t2\t3\n1\t2\n", 1, fields) })
    assert.same({ nil, 1 }, { records.parse("1\t2\t3\t4\n", 1, fields) })
    assert.same({ nil, 1 }, { records.parse("1\t2\t3", 1, fields) })
  end)

  it("checks its arguments", function()
    assert.has_error(function() records.parse("x", 3, fields) end)
    assert.has_error(function() records.parse("x", 1, {}) end)
  end)
end)
