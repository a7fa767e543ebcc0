// The fixture's "miniublk": links liburing (as blktests' does) and asks ublk_drv for a
// device id that does not exist, proving the static build reaches the driver.
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/ublk_cmd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
	struct io_uring ring;
	int fd = open("/dev/ublk-control", O_RDWR);

	if (fd < 0) {
		perror("open /dev/ublk-control");
		return 1;
	}
	int ret = io_uring_queue_init(4, &ring, IORING_SETUP_SQE128);
	if (ret < 0) {
		fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-ret));
		return 1;
	}
	printf("ublk-control open, io_uring up, UBLK_U_CMD_GET_DEV_INFO is %#lx\n",
	       (unsigned long)UBLK_U_CMD_GET_DEV_INFO);
	io_uring_queue_exit(&ring);
	close(fd);
	return 0;
}
