# packaging.version (cmake -P): the installed kvevictConfigVersion.cmake reports the version in
# include/kvevict/version.hpp, and answers find_package's version requests as docs/install.md
# says (SameMinorVersion: `find_package(kvevict M.m)` takes any M.m.x; M.(m−1), M.(m+1) or
# 1.0 are refused). The consumer checks the same at compile time (tests/packaging/consumer.cpp).
# Arguments (-D): HEADER (version.hpp), VERSION_FILE (the installed kvevictConfigVersion.cmake).
cmake_minimum_required(VERSION 3.25)

file(STRINGS "${HEADER}" lines REGEX "^#define KVEVICT_VERSION_(MAJOR|MINOR|PATCH) +[0-9]+ *$")
foreach(part MAJOR MINOR PATCH)
  set(${part} "")
  foreach(line IN LISTS lines)
    if(line MATCHES "^#define KVEVICT_VERSION_${part} +([0-9]+)")
      set(${part} ${CMAKE_MATCH_1})
    endif()
  endforeach()
  if(${part} STREQUAL "")
    message(FATAL_ERROR "${HEADER}: no #define KVEVICT_VERSION_${part} <number>")
  endif()
endforeach()
set(header_version ${MAJOR}.${MINOR}.${PATCH})
if(NOT EXISTS "${VERSION_FILE}")
  message(FATAL_ERROR "${VERSION_FILE} is not installed")
endif()

# ask(<requested version> <expected compatible> <expected exact>): what find_package(kvevict
# <requested>) would be told.
function(ask requested compatible exact)
  set(PACKAGE_FIND_NAME kvevict)
  set(PACKAGE_FIND_VERSION ${requested})
  string(REPLACE "." ";" parts "${requested}.0.0.0")
  list(GET parts 0 PACKAGE_FIND_VERSION_MAJOR)
  list(GET parts 1 PACKAGE_FIND_VERSION_MINOR)
  list(GET parts 2 PACKAGE_FIND_VERSION_PATCH)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
  set(PACKAGE_VERSION_EXACT FALSE)
  include("${VERSION_FILE}")
  if(NOT PACKAGE_VERSION STREQUAL header_version)
    message(FATAL_ERROR "kvevictConfigVersion.cmake says ${PACKAGE_VERSION}, "
                        "include/kvevict/version.hpp says ${header_version}")
  endif()
  if(NOT PACKAGE_VERSION_COMPATIBLE STREQUAL compatible OR NOT PACKAGE_VERSION_EXACT STREQUAL exact)
    message(FATAL_ERROR "find_package(kvevict ${requested}) against ${PACKAGE_VERSION}: "
                        "compatible ${PACKAGE_VERSION_COMPATIBLE}, exact ${PACKAGE_VERSION_EXACT}; "
                        "expected ${compatible}, ${exact}")
  endif()
endfunction()

math(EXPR next_minor "${MINOR} + 1")
math(EXPR next_major "${MAJOR} + 1")
ask(${header_version} TRUE TRUE)
ask(${MAJOR}.${MINOR} TRUE FALSE)
ask(${MAJOR}.${next_minor} FALSE FALSE)
ask(${next_major}.0 FALSE FALSE)
if(MINOR GREATER 0)
  math(EXPR previous_minor "${MINOR} - 1")
  ask(${MAJOR}.${previous_minor} FALSE FALSE)
endif()
message(STATUS "kvevictConfigVersion.cmake: ${header_version}, as include/kvevict/version.hpp")
