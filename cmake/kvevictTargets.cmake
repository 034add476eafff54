# Compile settings for kvevict's own programs (tests, benchmarks, the command, examples).
# The INTERFACE library itself carries none of these.
include_guard(GLOBAL)

# kvevict_strict(<target>): warnings are errors.
function(kvevict_strict target)
  target_link_libraries(${target} PRIVATE kvevict::kvevict)
  if(MSVC)
    target_compile_options(${target} PRIVATE /W4 /WX)
  else()
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Werror)
  endif()
endfunction()

# kvevict_fast(<target>): -O3 -march=native in Release (benchmarks and the kvevict command).
function(kvevict_fast target)
  if(KVEVICT_NATIVE AND NOT MSVC)
    target_compile_options(${target} PRIVATE $<$<CONFIG:Release>:-O3 -march=native>)
    # GCC 12's AVX-512 intrinsics header trips -Wmaybe-uninitialized inside Eigen's GEMM kernel
    # (_mm512_undefined_ps, GCC PR 105593, fixed in GCC 13): a false positive in a system header.
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
      target_compile_options(${target} PRIVATE $<$<CONFIG:Release>:-Wno-maybe-uninitialized>)
    endif()
  endif()
endfunction()
