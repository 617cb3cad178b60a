-- Specs for moonshift.version: normalized keys and the digit-aware ordering.
local version = require("moonshift.version")

describe("moonshift.version", function()
  describe("key", function()
    it("drops leading zeros from numeric parts", function()
      assert.equal("1", version.key("0001"))
      assert.equal("0", version.key("0000"))
      assert.equal("10", version.key("010"))
      assert.equal("1.1", version.key("1.01"))
    end)

    it("splits on dots, underscores and dashes and joins with dots", function()
      assert.equal("2019.2.26.2946", version.key("2019-02-26-002946"))
      assert.equal("1.1", version.key("1_1"))
      assert.equal("1.1", version.key("1.1"))
      assert.equal("1.2.3", version.key("1-2_3"))
    end)

    it("keeps non-numeric parts as written", function()
      assert.equal("1.beta.2", version.key("01.beta.02"))
      assert.equal("v1.0a", version.key("v1.0a"))
    end)

    it("gives every spelling of one version the same key", function()
      assert.equal(version.key("3"), version.key("0003"))
      assert.equal(version.key("1.1"), version.key("1_01"))
      assert.are_not.equal(version.key("1.1"), version.key("11"))
      assert.are_not.equal(version.key("1"), version.key("1.0"))
    end)

    it("keeps digits beyond the range of Lua integers", function()
      assert.equal("123456789012345678901234", version.key("000123456789012345678901234"))
    end)

    it("accepts an integer and raises on other types", function()
      assert.equal("42", version.key(42))
      assert.has_error(function() version.key(nil) end)
      assert.has_error(function() version.key({}) end)
    end)
  end)

  describe("compare", function()
    it("compares digits numerically, not as strings", function()
      assert.equal(-1, version.compare("9", "10"))
      assert.equal(1, version.compare("10", "9"))
      assert.equal(-1, version.compare("0009", "10"))
      assert.equal(0, version.compare("0003", "3"))
    end)

    it("compares 20-digit versions exactly, beyond 2^63", function()
      local a, b = "99999999999999999998", "99999999999999999999"
      assert.equal(-1, version.compare(a, b))
      assert.equal(1, version.compare(b, a))
      assert.equal(0, version.compare(b, "0" .. b))
      assert.equal(-1, version.compare("9223372036854775807", "9223372036854775808"))
      assert.equal(-1, version.compare("99999999999999999999", "100000000000000000000"))
    end)

    it("compares part by part", function()
      assert.equal(-1, version.compare("1.2", "1.10"))
      assert.equal(-1, version.compare("1.9.9", "1.10"))
      assert.equal(1, version.compare("2", "1.99"))
      assert.equal(0, version.compare("1_1", "1.01"))
      assert.equal(-1, version.compare("2019-02-26-002946", "2019-02-26-010000"))
    end)

    it("sorts fewer parts first when the shared parts are equal", function()
      assert.equal(-1, version.compare("1", "1.0"))
      assert.equal(1, version.compare("1.0", "1"))
      assert.equal(-1, version.compare("1.1", "1.1.1"))
    end)

    it("sorts a numeric part before a non-numeric one", function()
      assert.equal(-1, version.compare("1.2", "1.beta"))
      assert.equal(1, version.compare("a", "1"))
      assert.equal(-1, version.compare("1.0", "1.0a"))
    end)

    it("compares non-numeric parts bytewise", function()
      assert.equal(-1, version.compare("1.alpha", "1.beta"))
      assert.equal(-1, version.compare("B", "a"))
      assert.equal(0, version.compare("1.rc", "01.rc"))
    end)

    it("agrees with key: equal exactly when the keys are equal", function()
      local vs = { "1", "01", "1.0", "1_0", "1.00", "10", "1.a", "1-a", "2019-02-26", "1.",
        "1._", "a", "0" }
      for _, a in ipairs(vs) do
        for _, b in ipairs(vs) do
          assert.equal(version.key(a) == version.key(b), version.compare(a, b) == 0,
            a .. " vs " .. b)
        end
      end
    end)

    it("raises on a missing argument", function()
      assert.has_error(function() version.compare("1") end)
    end)
  end)

  describe("less", function()
    it("sorts a list with table.sort", function()
      local list = { "10", "9", "0001", "2.1", "2", "2.0.1", "100000000000000000000", "x" }
      table.sort(list, version.less)
      assert.same({ "0001", "2", "2.0.1", "2.1", "9", "10", "100000000000000000000", "x" },
        list)
    end)
  end)
end)
