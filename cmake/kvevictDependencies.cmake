# Finds kvevict's dependencies; when one is missing and KVEVICT_FETCH_DEPS is ON, downloads a
# pinned upstream release (URL + SHA-256). When that fails too, stops with the Debian packages
# to install.
include_guard(GLOBAL)
include(FetchContent)

set(KVEVICT_DEBIAN_PACKAGES "libeigen3-dev libgtest-dev libbenchmark-dev")

# kvevict_download(<name> <url> <sha256>): downloads <url> into the build tree, checks its hash,
# and declares it for FetchContent. Any failure is fatal with a message naming the packages.
function(kvevict_download name url sha256)
  set(why "")
  if(NOT KVEVICT_FETCH_DEPS)
    set(why "KVEVICT_FETCH_DEPS is OFF")
  else()
    set(archive "${CMAKE_BINARY_DIR}/_deps/${name}-download.tar.gz")
    if(EXISTS "${archive}")
      file(SHA256 "${archive}" have)
    endif()
    if(NOT have STREQUAL sha256)
      message(STATUS "kvevict: downloading ${name} from ${url}")
      file(DOWNLOAD "${url}" "${archive}" STATUS status TIMEOUT 120 INACTIVITY_TIMEOUT 30)
      list(GET status 0 code)
      list(GET status 1 text)
      if(code EQUAL 0)
        file(SHA256 "${archive}" have)
        if(NOT have STREQUAL sha256)
          set(why "the download's SHA-256 is ${have}, expected ${sha256}")
        endif()
      else()
        set(why "the download failed: ${text}")
      endif()
    endif()
  endif()
  if(NOT why STREQUAL "")
    message(FATAL_ERROR
      "kvevict: ${name} was not found and could not be fetched (${why}).\n"
      "Install the Debian packages: apt-get install -y ${KVEVICT_DEBIAN_PACKAGES}\n"
      "(or point CMAKE_PREFIX_PATH at an installation of ${name}).")
  endif()
  FetchContent_Declare(${name} URL "${archive}" URL_HASH SHA256=${sha256})
endfunction()

# Eigen 3.4: only its headers are needed; a fetched copy becomes an imported target so that the
# installed kvevict config can still ask for Eigen3::Eigen with find_dependency.
macro(kvevict_require_eigen)
  find_package(Eigen3 3.4 QUIET NO_MODULE)
  if(NOT TARGET Eigen3::Eigen)
    kvevict_download(eigen "https://gitlab.com/libeigen/eigen/-/archive/3.4.0/eigen-3.4.0.tar.gz"
                     8586084f71f9bde545ee7fa6d00288b264a2b7ac3607b974e54d13e7162c1c72)
    FetchContent_GetProperties(eigen)
    if(NOT eigen_POPULATED)
      FetchContent_Populate(eigen)
    endif()
    add_library(Eigen3::Eigen INTERFACE IMPORTED GLOBAL)
    target_include_directories(Eigen3::Eigen SYSTEM INTERFACE "${eigen_SOURCE_DIR}")
  endif()
endmacro()

macro(kvevict_require_gtest)
  find_package(GTest QUIET)
  if(NOT TARGET GTest::gtest_main)
    kvevict_download(googletest
      "https://github.com/google/googletest/archive/refs/tags/release-1.12.1.tar.gz"
      81964fe578e9bd7c94dfdb09c8e4d6e6759e19967e397dbea48d1c10e45d0df2)
    set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
    set(BUILD_GMOCK OFF CACHE BOOL "" FORCE)
    FetchContent_MakeAvailable(googletest)
  endif()
endmacro()

macro(kvevict_require_benchmark)
  find_package(benchmark QUIET)
  if(NOT TARGET benchmark::benchmark)
    kvevict_download(benchmark
      "https://github.com/google/benchmark/archive/refs/tags/v1.7.1.tar.gz"
      6430e4092653380d9dc4ccb45a1e2dc9259d581f4866dc0759713126056bc1d7)
    set(BENCHMARK_ENABLE_TESTING OFF CACHE BOOL "" FORCE)
    set(BENCHMARK_ENABLE_INSTALL OFF CACHE BOOL "" FORCE)
    set(BENCHMARK_ENABLE_GTEST_TESTS OFF CACHE BOOL "" FORCE)
    FetchContent_MakeAvailable(benchmark)
  endif()
endmacro()
