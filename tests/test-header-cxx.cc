// The public header compiles alone as C++11, and links with C linkage.
#include <shmbroker/shmbroker.h>

int main() {
        const shmb_reload_result *none = nullptr;
        shmb_access access = SHMB_RW;

        return static_cast<int>(shmb_reload_result_kept(none) != nullptr) + (access == SHMB_RO) +
               (shmb_errno_name(-2) != nullptr ? 0 : 1);
}
