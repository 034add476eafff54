# install() rules and the exported package: find_package(kvevict) gives kvevict::kvevict.
include_guard(GLOBAL)
include(CMakePackageConfigHelpers)

set(KVEVICT_CMAKE_DIR "${CMAKE_INSTALL_DATADIR}/cmake/kvevict" CACHE STRING
    "Where kvevictConfig.cmake is installed, relative to the prefix")

install(TARGETS kvevict EXPORT kvevictTargets)
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/kvevict" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(EXPORT kvevictTargets NAMESPACE kvevict:: DESTINATION "${KVEVICT_CMAKE_DIR}")

configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/kvevictConfig.cmake.in"
                              "${PROJECT_BINARY_DIR}/kvevictConfig.cmake"
                              INSTALL_DESTINATION "${KVEVICT_CMAKE_DIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/kvevictConfigVersion.cmake"
                                 COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/kvevictConfig.cmake"
              "${PROJECT_BINARY_DIR}/kvevictConfigVersion.cmake"
        DESTINATION "${KVEVICT_CMAKE_DIR}")
install(FILES "${PROJECT_SOURCE_DIR}/LICENSE" DESTINATION "${CMAKE_INSTALL_DATADIR}/doc/kvevict")
