# packaging.header_only (cmake -P): the header-only install an engine author does, from scratch
# (issue 33.4). Nothing is built before `cmake --install`:
#   1. configure the source tree into a fresh binary directory with the library only (tests,
#      tools, benchmarks off; KVEVICT_FETCH_DEPS off, so Eigen comes from the system),
#   2. `cmake --install` it into a fresh prefix: headers and the CMake package, no program,
#   3. build and run tests/packaging/find_package against that prefix (and only that prefix),
#   4. configure again with the tools on but unbuilt: `cmake --install` still installs the
#      library and skips the kvevict program (install(TARGETS … OPTIONAL) in tools/).
# Arguments (-D): SOURCE_DIR, WORK_DIR (removed and recreated), GENERATOR, CXX_COMPILER, and
# Eigen3_DIR when the build found Eigen as a CMake package.
cmake_minimum_required(VERSION 3.25)

foreach(var SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "header_only_install.cmake: -D${var}=… is required")
  endif()
endforeach()

set(eigen "")
if(Eigen3_DIR)
  set(eigen "-DEigen3_DIR=${Eigen3_DIR}")
endif()
set(common -G "${GENERATOR}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" ${eigen})
set(library_only -DKVEVICT_BUILD_TESTS=OFF -DKVEVICT_BUILD_TOOLS=OFF
                 -DKVEVICT_BUILD_BENCHMARKS=OFF -DKVEVICT_FETCH_DEPS=OFF -DKVEVICT_INSTALL=ON)

# run(<what> <command>…): runs the command, its output in the test's log; stops on failure.
function(run what)
  message(STATUS "header-only install: ${what}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status)
  if(NOT status EQUAL 0)
    string(REPLACE ";" " " command "${ARGN}")
    message(FATAL_ERROR "header-only install: ${what} failed (${status}): ${command}")
  endif()
endfunction()

# expect(<prefix> <path> EXISTS|MISSING)
function(expect prefix path state)
  if(state STREQUAL "EXISTS" AND NOT EXISTS "${prefix}/${path}")
    message(FATAL_ERROR "header-only install: ${prefix}/${path} was not installed")
  elseif(state STREQUAL "MISSING" AND EXISTS "${prefix}/${path}")
    message(FATAL_ERROR "header-only install: ${prefix}/${path} should not be installed")
  endif()
endfunction()

# The default GNUInstallDirs layout (KVEVICT_CMAKE_DIR = share/cmake/kvevict).
function(expect_library prefix)
  foreach(path include/kvevict/kvevict.hpp include/kvevict/version.hpp
               share/cmake/kvevict/kvevictConfig.cmake
               share/cmake/kvevict/kvevictConfigVersion.cmake
               share/cmake/kvevict/kvevictTargets.cmake share/doc/kvevict/LICENSE)
    expect("${prefix}" "${path}" EXISTS)
  endforeach()
  expect("${prefix}" bin/kvevict MISSING)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")

# 1–2: the library alone, installed without a build.
run("configure the library alone"
    "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${WORK_DIR}/library" ${common} ${library_only})
if(EXISTS "${WORK_DIR}/library/_deps")
  message(FATAL_ERROR "header-only install: the configure downloaded something (_deps)")
endif()
run("install without building"
    "${CMAKE_COMMAND}" --install "${WORK_DIR}/library" --prefix "${prefix}")
expect_library("${prefix}")

# 3: the find_package consumer, against this prefix only (no package registry, no system copy).
run("build and run tests/packaging/find_package against the prefix"
    "${CMAKE_CTEST_COMMAND}" --build-and-test "${SOURCE_DIR}/tests/packaging/find_package"
    "${WORK_DIR}/consumer" --build-generator "${GENERATOR}"
    --build-options "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" -DCMAKE_BUILD_TYPE=Release
                    "-DCMAKE_PREFIX_PATH=${prefix}" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF ${eigen}
    --test-command consumer)
file(STRINGS "${WORK_DIR}/consumer/CMakeCache.txt" found REGEX "^kvevict_DIR:")
if(NOT found STREQUAL "kvevict_DIR:PATH=${prefix}/share/cmake/kvevict")
  message(FATAL_ERROR "header-only install: the consumer found another kvevict (${found})")
endif()

# 4: a full configure (the tools on) whose program was never built.
run("configure with the tools, build nothing"
    "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${WORK_DIR}/with-tools" ${common} ${library_only}
    -DKVEVICT_BUILD_TOOLS=ON)
run("install it without building"
    "${CMAKE_COMMAND}" --install "${WORK_DIR}/with-tools" --prefix "${WORK_DIR}/prefix-with-tools")
expect_library("${WORK_DIR}/prefix-with-tools")

message(STATUS "header-only install: ok (${prefix})")
