# packaging.docs (cmake -P): the CMake lines docs/install.md shows are the lines the packaging
# tests build. Each block between "# [docs/install.md: <name>]" and "# [end]" in a consumer's
# CMakeLists.txt must appear word for word in the document, and a GIT_TAG in it must be the tag
# tools/release-tag.sh makes for this version (v<MAJOR.MINOR.PATCH>).
# Arguments (-D): DOC (docs/install.md), CONSUMERS (tests/packaging: each <way>/CMakeLists.txt is
# read), VERSION.
cmake_minimum_required(VERSION 3.25)

file(READ "${DOC}" doc)
file(GLOB files "${CONSUMERS}/*/CMakeLists.txt")
set(start_marker "# [docs/install.md: ")
set(end_marker "# [end]\n")
set(count 0)
foreach(file IN LISTS files)
  file(READ "${file}" text)
  while(TRUE)
    string(FIND "${text}" "${start_marker}" start)
    if(start EQUAL -1)
      break()
    endif()
    string(SUBSTRING "${text}" ${start} -1 text)
    string(FIND "${text}" "]\n" name_end)
    string(LENGTH "${start_marker}" name_begin)
    math(EXPR name_length "${name_end} - ${name_begin}")
    string(SUBSTRING "${text}" ${name_begin} ${name_length} name)
    math(EXPR body_begin "${name_end} + 2")
    string(SUBSTRING "${text}" ${body_begin} -1 text)
    string(FIND "${text}" "${end_marker}" body_end)
    if(body_end EQUAL -1)
      message(FATAL_ERROR "${file}: the block '${name}' has no '# [end]'")
    endif()
    string(SUBSTRING "${text}" 0 ${body_end} body)
    string(SUBSTRING "${text}" ${body_end} -1 text)

    string(FIND "${doc}" "${body}" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "${DOC} does not show the '${name}' lines of ${file} as they are:\n"
                          "${body}")
    endif()
    if(body MATCHES "GIT_TAG +([^ \n]+)" AND NOT CMAKE_MATCH_1 STREQUAL "v${VERSION}")
      message(FATAL_ERROR "${file} ('${name}'): GIT_TAG ${CMAKE_MATCH_1}, but the version is "
                          "${VERSION} (include/kvevict/version.hpp): the tag is v${VERSION}")
    endif()
    math(EXPR count "${count} + 1")
  endwhile()
endforeach()
if(count EQUAL 0)
  message(FATAL_ERROR "no '${start_marker}…]' blocks in ${CONSUMERS}/*/CMakeLists.txt")
endif()
message(STATUS "${DOC}: the ${count} snippets are the tested ones")
