-- json: sorted keys and real empty arrays, so documents diff cleanly.
local json = require("moonshift.json")

describe("json", function()
  it("sorts object keys and keeps arrays in order", function()
    assert.are.equal('{"a":1,"b":[3,2,1],"c":{"x":true,"y":"s"}}',
      json.encode({ c = { y = "s", x = true }, b = { 3, 2, 1 }, a = 1 }))
  end)

  it("encodes a marked empty list as [] and an unmarked empty table as {}", function()
    assert.are.equal('{"list":[],"obj":{}}', json.encode({ list = json.array(), obj = {} }))
  end)

  it("escapes strings and round-trips through decode", function()
    local v = { s = 'quote " and \\ and \n newline', n = 1.5 }
    assert.are.same(v, json.decode(json.encode(v)))
  end)
end)
