// The public header compiles alone as C++11, and links with C linkage.
#include <shmbroker/shmbroker.h>

int main() {
        shmb_channel_info info = {};

        return static_cast<int>(info.size) + (shmb_errno_name(-2) != nullptr ? 0 : 1);
}
