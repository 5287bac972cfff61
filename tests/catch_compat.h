// One include for Catch2 v2 (Debian 12) and v3 (Ubuntu 24.04). Tests use only the macros the
// two share: TEST_CASE, SECTION, REQUIRE, CHECK, REQUIRE_THROWS_*, INFO, WARN.
#pragma once
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif
// Approx lives in namespace Catch in v3 and at global scope (too) in v2.
#if __has_include(<catch2/catch_all.hpp>)
using Catch::Approx;
#endif
